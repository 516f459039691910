# One image for every fedcmi deployment process: flower-superlink (+ the ServerApp it starts),
# flower-supernode, and the long-lived ClientApp worker (python -m clients.worker).
# All dependencies are baked in, so runs never install anything (offline clusters):
# FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 below. See README "Deploying real clients".
FROM python:3.11-slim

ARG APP_UID=1000
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 FLWR_HOME=/home/app/.flwr

WORKDIR /app
# CPU wheels of the pinned torch first (the default index would pull the CUDA build, several GB).
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY fedcmi fedcmi/
COPY clients clients/
COPY server server/
RUN pip install .

RUN useradd --uid "${APP_UID}" --create-home app \
    && mkdir -p /app/runs /app/state /app/data "${FLWR_HOME}" \
    && chown -R app /app/runs /app/state "${FLWR_HOME}"
USER app
EXPOSE 8000 9094
CMD ["flower-superlink", "--help"]
