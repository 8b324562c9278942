# blockhook: one image for every service (ingest, processor, workers, migrate, scripts).
#   docker build -t blockhook:0.1.0 .
#   docker run --rm -e DATABASE_URL=... -e RPC_URL=... blockhook:0.1.0 python -m ingest
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_STATE_HOME=/tmp/blockhook-state \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (wheels for every one of them on linux/amd64 and arm64: no compiler
# needed), so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY core/__init__.py core/__init__.py
COPY ingest/__init__.py ingest/__init__.py
COPY processor/__init__.py processor/__init__.py
COPY retention/__init__.py retention/__init__.py
COPY workers/__init__.py workers/__init__.py
RUN pip install .

# The code, installed as a regular (non-editable) package; alembic and scripts run from /app.
COPY core core
COPY ingest ingest
COPY processor processor
COPY retention retention
COPY workers workers
RUN pip install --no-deps --force-reinstall .
COPY alembic.ini ./
COPY alembic alembic
COPY scripts scripts

RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin blockhook
USER blockhook

EXPOSE 9100
CMD ["python", "-m", "ingest"]
