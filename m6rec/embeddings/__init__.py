"""The embedding file contract, owned here because every stage uses it: encoders and the two-tower model
write embedding Parquet files (:mod:`m6rec.embeddings.store`), candidate sources and the ranker read
them, and :mod:`m6rec.embeddings.profiles` turns item vectors into per-user profiles."""
