# Iris on a CUDA runtime. Weights are downloaded at run time into the /cache volume, never baked in.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

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
RUN pip install .
COPY config.yaml config.toy.yaml ./

RUN useradd --create-home --uid 10001 iris && mkdir -p /cache && chown iris:iris /cache
ENV IRIS_CACHE=/cache \
    HF_HOME=/cache/huggingface
VOLUME ["/cache"]
USER iris

# The bot reads DISCORD_TOKEN from the environment.
CMD ["iris", "run", "--config", "config.yaml"]
