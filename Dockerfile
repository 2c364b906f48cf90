# m6rec worker image: the package and its CLI on a slim Python base.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libsndfile1 make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY m6rec ./m6rec
COPY features ./features
COPY ranker ./ranker
COPY pipelines ./pipelines
COPY flows ./flows
RUN pip install --no-cache-dir .
ENTRYPOINT ["m6rec"]
CMD ["--help"]
