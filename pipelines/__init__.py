"""Pipeline stages: plain-Python compositions of the m6rec, features and ranker libraries."""
