# Iris on a CUDA runtime. Nothing stateful is baked in: the weights cache, the job journal, the search
# index, the settings and the heartbeat all live in the /data volume, and the config is mounted at
# /config/config.yaml (see compose.yaml). Weights are downloaded at run time into /data/cache.
# The base image's CUDA matches the torch wheel installed below: torch 2.14.1 from PyPI is built for
# CUDA 13.0 (torch.version.cuda == "13.0", cuDNN 9), so the base is CUDA 13.0 with cuDNN; a CUDA 13 wheel
# needs an NVIDIA driver >= 580 on the host. Change TORCH and the base together.
# CPU-only image (no CUDA libraries, a much smaller download):
#   docker build --build-arg BASE=ubuntu:24.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
ARG BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}
ARG TORCH="torch==2.14.1 torchvision==0.29.1"
ARG TORCH_INDEX=https://pypi.org/simple

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/iris
ENV PATH=/opt/iris/bin:$PATH

WORKDIR /app
# The dependencies first, from pyproject.toml and the pinned versions alone: an edit of the source reuses
# this layer instead of reinstalling torch and the rest (several GB).
COPY pyproject.toml constraints.txt ./
RUN pip install --index-url "$TORCH_INDEX" $TORCH -c constraints.txt \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c constraints.txt \
    && rm /tmp/requirements.txt
# Then the source (.dockerignore keeps out venvs, git, caches, journals, indexes and secrets).
COPY . .
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 iris \
    && mkdir -p /data /config \
    && chown iris:iris /data
ENV IRIS_DATA=/data \
    IRIS_CONFIG=/config/config.yaml \
    HF_HOME=/data/cache/huggingface
VOLUME ["/data"]
USER iris

# Healthy while the bot's heartbeat (rewritten every 30 s) is fresh, Discord is connected and the
# inference worker answers; the start period covers loading (or first downloading) the models.
HEALTHCHECK --interval=30s --timeout=15s --start-period=10m --retries=3 CMD ["iris", "status", "--local"]

# The token comes from DISCORD_TOKEN (compose.yaml reads it from .env); the config from IRIS_CONFIG.
CMD ["iris", "run"]
