"""Prefect flows that orchestrate pipeline stages (nightly embeddings, ranker training, batch lists).

Every task calls one function of ``pipelines/``; the flows decide only what runs, when and in what order.
"""

import logging

from m6rec.log import LOGGER_NAME, quiet_third_party_loggers

# The pipelines report progress on the ``m6rec`` logger at INFO; flow runs forward it to the Prefect API
# (PREFECT_LOGGING_EXTRA_LOGGERS=m6rec), where its warnings show as warnings. A level already chosen
# (``m6rec -v`` sets DEBUG) stays. Libraries' INFO chatter stays out of the run's log.
if logging.getLogger(LOGGER_NAME).level == logging.NOTSET:
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
quiet_third_party_loggers()
