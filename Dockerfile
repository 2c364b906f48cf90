# m6rec worker image: the package, its CLI, the Prefect flows and prefect.yaml, run by a non-root user.
# The default build is CPU-only. docker/compose.gpu.yml builds the CUDA variant with
#   TORCH_INDEX_URL=https://pypi.org/simple (PyPI's Linux torch wheels bundle CUDA) and M6REC_GPU=true.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG M6REC_GPU=false
ARG UID=1000
ARG GID=1000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    M6REC_DATA_DIR=/data \
    M6REC_OUT_DIR=/outputs

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

# Everything installs through requirements.lock, the versions the test suite passed with. The CPU image
# takes PyTorch at the locked version from PyTorch's CPU index first (PyPI's Linux build bundles CUDA,
# several GB) and leaves out the CUDA runtime wheels the lock lists for PyPI's build; the GPU image
# (M6REC_GPU=true, TORCH_INDEX_URL=PyPI) installs the lock as it is.
WORKDIR /app
COPY requirements.lock ./
RUN if [ "$M6REC_GPU" = "true" ]; then \
        pip install -r requirements.lock; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" $(grep -E '^(torch|torchvision)==' requirements.lock) \
        && grep -vE '^(nvidia-|cuda-|triton==)' requirements.lock > /tmp/cpu.lock \
        && pip install -r /tmp/cpu.lock && rm /tmp/cpu.lock; \
    fi

COPY pyproject.toml README.md prefect.yaml ./
COPY m6rec ./m6rec
COPY features ./features
COPY ranker ./ranker
COPY pipelines ./pipelines
COPY flows ./flows

# faiss-cpu and faiss-gpu-cu12 both install the `faiss` module: after removing faiss-cpu, reinstall the
# GPU wheel so that its files, which the removal deleted, are back.
RUN pip install --no-deps --no-build-isolation . \
    && if [ "$M6REC_GPU" = "true" ]; then \
        pip install --constraint requirements.lock "faiss-gpu-cu12>=1.8" \
        && pip uninstall -y faiss-cpu \
        && pip install --no-deps --force-reinstall \
            "faiss-gpu-cu12==$(pip show faiss-gpu-cu12 | sed -n 's/^Version: //p')"; \
    fi \
    && pip check

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/m6rec-entrypoint

RUN groupadd --non-unique --gid "$GID" m6rec \
    && useradd --non-unique --uid "$UID" --gid "$GID" --create-home m6rec \
    && mkdir -p /data /outputs /home/m6rec/.prefect \
    && chown m6rec:m6rec /data /outputs /home/m6rec/.prefect
USER m6rec

ENTRYPOINT ["m6rec-entrypoint"]
CMD ["worker"]
