# syntax=docker/dockerfile:1.7
# One image per worker task: TASK names it, EXTRAS adds what only that task
# needs (the thumbnail and similarity images: EXTRAS=documents, for Pillow and
# pypdfium2). skaffold.yaml builds one artifact per task.
# Build from the repository root:
#   docker build -f images/worker.Dockerfile --build-arg TASK=thumbnail --build-arg EXTRAS=documents .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY core ./core
COPY workers ./workers
RUN /opt/venv/bin/pip install ".${EXTRAS:+[$EXTRAS]}" && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
ARG TASK
RUN test -n "$TASK" || { echo "build with --build-arg TASK=<task>" >&2; exit 1; }
RUN groupadd --system --gid 10001 handin \
    && useradd --system --uid 10001 --gid handin --home-dir /app --shell /usr/sbin/nologin handin \
    && mkdir -p /app/var && chown handin:handin /app/var
COPY --from=build /opt/venv /opt/venv
# DEV=1 (skaffold's dev profile only): the app user may overwrite synced .py files.
ARG DEV=""
RUN if [ -n "$DEV" ]; then chown -R handin:handin /opt/venv/lib; fi
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 WORKER_TASK=${TASK}
LABEL org.opencontainers.image.title="handin-worker-${TASK}" org.opencontainers.image.source="https://github.com/handin/handin"
USER 10001:10001
EXPOSE 9100
CMD ["/bin/sh", "-c", "exec handin worker \"$WORKER_TASK\""]
