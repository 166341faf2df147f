# syntax=docker/dockerfile:1
#
# One image trains and serves (the same code, the same pinned dependencies):
#   docker build -t d2l-serve:cpu .
#   docker build --build-arg VARIANT=cuda -t d2l-serve:cuda .
#   docker run d2l-serve:cpu python -m training --model all --out /app/models
#   docker run -p 8001:8001 -p 8002:8002 -v models:/app/models:ro d2l-serve:cpu   # the server
#
# VARIANT=cpu  -> python:3.11-slim with torch's CPU wheels (no CUDA libraries in the image).
# VARIANT=cuda -> NVIDIA's CUDA 13 + cuDNN 9 runtime image with the same CPython 3.11 and
#                 torch's cu130 wheels; onnxruntime-gpu 1.31 (built for CUDA 13.0) finds
#                 cuBLAS/cuFFT/cuRAND/cuDNN on the system library path of that base.
ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# builder: a virtual environment in /opt/venv with the pinned dependencies and the project.
# Every dependency ships manylinux wheels, so no compiler is needed even here.
FROM ${PYTHON_IMAGE} AS builder
ARG VARIANT
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu130
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml's pinned list, so that editing the source does
# not reinstall torch. torch==2.14.1 is satisfied by 2.14.1+cpu / 2.14.1+cu130 from the extra
# index (pip prefers the local-version build when both indexes offer 2.14.1).
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$VARIANT" in \
      cpu) torch_index="$TORCH_INDEX_CPU" ;; \
      cuda) torch_index="$TORCH_INDEX_CUDA" ;; \
      *) echo "VARIANT must be cpu or cuda; received '$VARIANT'" >&2; exit 2 ;; \
    esac \
    && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install --extra-index-url "$torch_index" -r /tmp/requirements.txt

# The packages pyproject.toml installs ([tool.setuptools.packages.find] include).
COPY protos/ protos/
COPY model_repository/ model_repository/
COPY training/ training/
COPY serving/ serving/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && cd / && python -c "import model_repository, protos.predict_pb2, serving.healthcheck, training"

# ---------------------------------------------------------------------------------------------
# Runtime bases, one per variant; only the one named by VARIANT is built.
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-cuda
ENV DEBIAN_FRONTEND=noninteractive
# The venv points at /usr/local/bin/python3.11, so bring exactly that interpreter from the
# builder (Ubuntu 24.04 ships 3.12), plus the shared libraries its extension modules link to.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       ca-certificates libbz2-1.0 libexpat1 libffi8 libgdbm6t64 liblzma5 libncursesw6 \
       libreadline8t64 libsqlite3-0 libssl3t64 libuuid1 netbase tzdata zlib1g \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /usr/local/ /usr/local/
# Fail the build here, not at run time, if an extension module misses a library.
RUN ldconfig \
    && python3.11 -c "import bz2, ctypes, decimal, hashlib, lzma, readline, sqlite3, ssl, uuid, zlib"

# ---------------------------------------------------------------------------------------------
# runtime: the venv, a non-root user, and nothing else from the builder.
FROM base-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="d2l-serve" \
      org.opencontainers.image.description="Train d2l models, export ONNX, serve over gRPC" \
      io.d2lserve.variant="${VARIANT}"

# A fixed, non-root uid (not the 1000 Ubuntu gives its default user) so Kubernetes'
# runAsNonRoot can verify it. /app/models and /app/data belong to it: an empty named volume
# mounted there starts with this ownership, so training can write into it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/models /app/data \
    && chown -R app:app /app

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/app \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    D2LSERVE_VARIANT=${VARIANT}

WORKDIR /app
USER 10001:10001
EXPOSE 8001 8002

# The gRPC health service, not a TCP check: the port is open before models are loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck", "--target", "127.0.0.1:8001", "--timeout", "3"]

# `docker stop` waits 10 s before SIGKILL, so drain within 8 (compose allows more: 20 of 25 s).
CMD ["python", "-m", "serving", "--model-repository", "/app/models", "--host", "0.0.0.0", \
     "--grpc-port", "8001", "--metrics-port", "8002", "--grace-seconds", "8"]
