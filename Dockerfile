# syntax=docker/dockerfile:1
#
# Two images from one file; docker-compose.yml builds both.
#
#   --target exporter  the exporter alone: ENTRYPOINT celery-events-exporter, port 9540.
#                      It is the last stage, so a plain `docker build .` builds it:
#                        docker build -t celery-events-exporter .
#                        docker run -p 127.0.0.1:9540:9540 celery-events-exporter \
#                          --broker-url redis://redis:6379/0
#   --target app       the demo Django project (proj/) with the `demo` extra: the web app,
#                      the Celery workers and the load generator (docker-compose.yml sets the
#                      command of each).
#
# Both are python:3.11-slim with a virtualenv in /opt/venv, no compiler or build tools (every
# dependency ships a manylinux wheel), and run as the unprivileged user `celery` (uid 10001).
# The code is owned by root, so the processes cannot rewrite it.

ARG PYTHON_IMAGE=python:3.11-slim

# --- shared base: interpreter settings and the runtime user ---------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 celery \
 && useradd --system --uid 10001 --gid celery --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin celery
LABEL org.opencontainers.image.source="https://github.com/celery-events-exporter/celery-events-exporter" \
      org.opencontainers.image.licenses="Apache-2.0"

# --- build: the project's wheel (one import package, celery_events_exporter) ----------------
FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY dashboards ./dashboards
COPY alerts ./alerts
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- virtualenvs: one without extras (exporter), one with the demo extra (app) --------------
FROM base AS exporter-venv
COPY --from=build /wheels /wheels
RUN python -m venv /opt/venv \
 && pip install /wheels/celery_events_exporter-*.whl

FROM base AS app-venv
COPY --from=build /wheels /wheels
RUN python -m venv /opt/venv \
 && pip install "$(ls /wheels/celery_events_exporter-*.whl)[demo]"

# --- app: Django web, Celery workers, load generator ----------------------------------------
FROM base AS app
COPY --from=app-venv /opt/venv /opt/venv
# docker-compose.yml mounts the demo's signing key pair here from a named volume. A fresh
# volume takes the owner of the image's directory, and `certs` writes it as celery.
RUN install -d -o celery -g celery -m 0750 /certs
WORKDIR /app/proj
COPY proj/ /app/proj/
# manage.py and `celery -A proj` both default DJANGO_SETTINGS_MODULE; PYTHONPATH makes
# `proj` and `tasks` importable from any working directory (healthchecks, `docker exec`).
ENV PYTHONPATH=/app/proj \
    DJANGO_SETTINGS_MODULE=proj.settings
USER celery
EXPOSE 8000
# The web app by default; docker-compose.yml runs migrate, the workers and loadgen from the
# same image with their own commands (and healthchecks, which differ per role).
CMD ["python", "manage.py", "runserver", "0.0.0.0:8000", "--noreload"]

# --- exporter (default target) --------------------------------------------------------------
FROM base AS exporter
COPY --from=exporter-venv /opt/venv /opt/venv
USER celery
EXPOSE 9540
# /healthz answers 200 while the process serves HTTP (/readyz also wants the broker). A
# --port other than 9540 is honoured when it is set as CELERY_EVENTS_EXPORTER_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CELERY_EVENTS_EXPORTER_PORT', '9540') + '/healthz', timeout=4)"]
ENTRYPOINT ["celery-events-exporter"]
