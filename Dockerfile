# Iris on a CUDA runtime. Weights are downloaded at run time into the /cache volume, never baked in.
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
COPY pyproject.toml README.md ./
COPY iris ./iris
COPY models ./models
COPY bot ./bot
RUN pip install --index-url "$TORCH_INDEX" $TORCH && pip install .
COPY config.yaml config.toy.yaml ./

RUN useradd --create-home --uid 10001 iris && mkdir -p /cache && chown iris:iris /cache
ENV IRIS_CACHE=/cache \
    HF_HOME=/cache/huggingface
VOLUME ["/cache"]
USER iris

# The bot reads DISCORD_TOKEN from the environment.
CMD ["iris", "run", "--config", "config.yaml"]
