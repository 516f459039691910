# One image for every fedcmi deployment process: flower-superlink (+ the ServerApp it starts),
# flower-supernode, and the long-lived ClientApp worker (python -m clients.worker).
# All dependencies are baked in, so runs never install anything (offline clusters):
# FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 below. See docs/deployment-compose.md.
#
# Build arguments:
#   TORCH_INDEX  where pip takes torch/torchvision from. Default: PyTorch's CPU wheel index, a CPU-only
#                image. https://pypi.org/simple gives the CUDA build (7.13 GB image measured; GPU hosts only,
#                which also need the NVIDIA container toolkit); any PEP 503 index or mirror works.
#   APP_UID, APP_GID   uid/gid of the `app` user the processes run as (default 1000). They need not match
#                the host user: the entrypoint copies the mounted keys to that user (see below).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG APP_UID=1000
ARG APP_GID=1000
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 HOME=/home/app FLWR_HOME=/home/app/.flwr

RUN groupadd --gid "${APP_GID}" app && useradd --uid "${APP_UID}" --gid app --create-home app

WORKDIR /app
# The pinned torch first, from TORCH_INDEX; `pip install .` then finds the pin satisfied and keeps it.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md LICENSE ./
COPY fedcmi fedcmi/
COPY clients clients/
COPY server server/
RUN pip install .

# /app/certs: the entrypoint's copies of the mounted keys (owner app, 0400); runs/state: named volumes,
# which the engine initialises from these directories, so they start out owned by app.
COPY deploy/docker-entrypoint.sh /usr/local/bin/fedcmi-entrypoint
RUN chmod 0755 /usr/local/bin/fedcmi-entrypoint \
    && mkdir -p /app/runs /app/state /app/data /app/certs "${FLWR_HOME}" \
    && chown app:app /app/runs /app/state /app/certs "${FLWR_HOME}" \
    && chmod 0700 /app/certs
# No USER: the entrypoint starts as root only to copy the keys, then runs the command as `app` (setpriv).
ENTRYPOINT ["fedcmi-entrypoint"]
EXPOSE 8000
CMD ["flower-superlink", "--help"]
