#
# Three images from one file, each a named stage built with --target (the last stage is the
# default, so a plain `docker build .` gives the CPU serving image):
#
#   docker build --target serving-cpu  -t d2l-serve:cpu .    # server, client, health probe,
#                                                             # load tester: ONNX Runtime, no torch
#   docker build --target serving-cuda -t d2l-serve:cuda .   # the same on CUDA 13 (onnxruntime-gpu)
#   docker build --target training     -t d2l-serve:train .  # torch: train + export + verify
#
#   docker run -v models:/app/models d2l-serve:train          # trains all three models
#   docker run -p 8001:8001 -p 8002:8002 -v models:/app/models:ro d2l-serve:cpu   # serves them
#
# With podman or buildah, add `--format docker`: the OCI format has no HEALTHCHECK.
# Every stage is named in a FROM of its own (no `FROM base-${VARIANT}`): buildah 1.28 skips a
# stage reached only through a variable. Offline and air-gapped builds: docs/deployment.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# builder: an empty virtual environment in /opt/venv and the pinned requirement lists.
# Every dependency ships manylinux wheels, so no compiler is needed even here.
FROM ${PYTHON_IMAGE} AS builder
# pip reads its usual configuration; podman and buildah can bind-mount the host's pip.conf
# and local wheel folders into these RUN steps (-v), which is how the offline build works.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/requirements.py scripts/

# source: the four packages pyproject.toml installs, copied after the dependencies are in.
FROM scratch AS source
COPY protos/ /protos/
COPY model_repository/ /model_repository/
COPY training/ /training/
COPY serving/ /serving/

# ---------------------------------------------------------------------------------------------
# One virtual environment per image: the base dependencies + the extras that image needs;
# dependencies before the source, so that editing the code does not reinstall them.
FROM builder AS venv-cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    python scripts/requirements.py cpu > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY --from=source / ./
RUN pip install --no-cache-dir --no-deps . \
    && python -P -c "import protos.predict_pb2, serving.healthcheck, serving.loadtest.cli" \
    && pip uninstall --yes --quiet pip setuptools  # a runtime venv installs nothing more

FROM builder AS venv-gpu
RUN --mount=type=cache,target=/root/.cache/pip \
    python scripts/requirements.py gpu > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY --from=source / ./
RUN pip install --no-cache-dir --no-deps . \
    && python -P -c "import protos.predict_pb2, serving.healthcheck, serving.loadtest.cli" \
    && pip uninstall --yes --quiet pip setuptools  # a runtime venv installs nothing more

FROM builder AS venv-train
RUN --mount=type=cache,target=/root/.cache/pip \
    python scripts/requirements.py train gpu > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY --from=source / ./
RUN pip install --no-cache-dir --no-deps . \
    && python -P -c "import model_repository, serving.healthcheck, training, training.verify"

# ---------------------------------------------------------------------------------------------
# runtime: what every image shares: a fixed non-root uid (not the 1000 of Ubuntu's default
# user, so Kubernetes' runAsNonRoot can verify it), /app/models and /app/data owned by it (an
# empty named volume mounted there starts with this ownership), nothing written outside them
# and /tmp (a read-only root file system works).
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/models /app/data \
    && chown -R app:app /app
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/app \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
EXPOSE 8001 8002

# ---------------------------------------------------------------------------------------------
# training: torch (pip's CUDA build: it falls back to the CPU), onnx, scikit-learn, matplotlib.
FROM runtime AS training
LABEL org.opencontainers.image.title="d2l-serve-train" \
      org.opencontainers.image.description="Train the d2l models and export verified ONNX"
COPY --from=venv-train /opt/venv /opt/venv
USER 10001:10001
HEALTHCHECK NONE
CMD ["python", "-m", "training", "--model", "all", "--data-dir", "/app/data", \
     "--out", "/app/models"]

# ---------------------------------------------------------------------------------------------
# serving-cuda: NVIDIA's CUDA 13 + cuDNN 9 runtime with the same CPython 3.11 as the builder;
# onnxruntime-gpu 1.31 (built for CUDA 13) finds cuBLAS/cuFFT/cuRAND/cuDNN on the library path.
FROM ${CUDA_IMAGE} AS serving-cuda
ENV DEBIAN_FRONTEND=noninteractive
# The venv points at /usr/local/bin/python3.11 (python:3.11-slim's), so bring exactly that
# interpreter from the builder (Ubuntu 24.04 ships 3.12) and the libraries it links to.
# Unpinned: Ubuntu's security updates replace these versions; CUDA_IMAGE is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       ca-certificates libbz2-1.0 libexpat1 libffi8 libgdbm6t64 liblzma5 libncursesw6 \
       libreadline8t64 libsqlite3-0 libssl3t64 libuuid1 netbase tzdata zlib1g \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /usr/local/ /usr/local/
RUN ldconfig \
    && python3.11 -c "import bz2, ctypes, decimal, hashlib, lzma, readline, sqlite3, ssl, uuid, zlib" \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/models /app/data \
    && chown -R app:app /app
COPY --from=venv-gpu /opt/venv /opt/venv
LABEL org.opencontainers.image.title="d2l-serve" \
      org.opencontainers.image.description="Serve d2l models over gRPC (ONNX Runtime, CUDA)"
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/app \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8001 8002
# The gRPC health service, not a TCP check: the port is open before models are loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck", "--target", "127.0.0.1:8001", "--timeout", "3"]
# `docker stop` waits 10 s before SIGKILL, so drain within 8 (compose allows more: 20 of 25 s).
CMD ["python", "-m", "serving", "--model-repository", "/app/models", "--host", "0.0.0.0", \
     "--grpc-port", "8001", "--metrics-port", "8002", "--grace-seconds", "8"]

# ---------------------------------------------------------------------------------------------
# serving-cpu (the default target): ONNX Runtime's CPU wheel, gRPC, numpy; no torch.
FROM runtime AS serving-cpu
LABEL org.opencontainers.image.title="d2l-serve" \
      org.opencontainers.image.description="Serve d2l models over gRPC (ONNX Runtime, CPU)"
COPY --from=venv-cpu /opt/venv /opt/venv
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck", "--target", "127.0.0.1:8001", "--timeout", "3"]
CMD ["python", "-m", "serving", "--model-repository", "/app/models", "--host", "0.0.0.0", \
     "--grpc-port", "8001", "--metrics-port", "8002", "--grace-seconds", "8"]
