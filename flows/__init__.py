"""Prefect flows that orchestrate pipeline stages (nightly embeddings, ranker training, batch lists).

Every task calls one function of ``pipelines/``; the flows decide only what runs, when and in what order.
"""

import logging

# The pipelines report progress on the ``m6rec`` logger at INFO; flow runs forward it to the Prefect API.
logging.getLogger("m6rec").setLevel(logging.INFO)
