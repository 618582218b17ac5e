# Small, non-root image built from the same hash-pinned lock file as `make run`.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY alembic ./alembic
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOST=0.0.0.0 PORT=8000
RUN useradd --system --uid 10001 --home-dir /srv livepost
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY --chown=root:root alembic.ini ./
COPY --chown=root:root alembic ./alembic
USER livepost
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
# Migrations run once, in their own service (see docker-compose.yml); workers only serve.
# `livepost worker` runs uvicorn with the options every worker gets (app/worker.py): livepost's
# WebSocket protocol, frames past 64 KiB refused as they arrive, no permessage-deflate, bounded
# shutdown, access logs from the app itself. It listens on HOST:PORT.
CMD ["livepost", "worker"]
