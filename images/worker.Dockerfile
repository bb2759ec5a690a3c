# syntax=docker/dockerfile:1.7
# One image per worker task: TASK names it, EXTRAS adds what only that task
# needs (the thumbnail and similarity images: EXTRAS=documents, for Pillow,
# pypdfium2 and defusedxml, from requirements/worker-documents.lock).
# skaffold.yaml builds one artifact per task.
# Build from the repository root:
#   docker build -f images/worker.Dockerfile --build-arg TASK=thumbnail --build-arg EXTRAS=documents .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, exactly as locked (versions and file hashes, wheels only): this
# layer is rebuilt only when the lock changes. EXTRAS picks the lock: worker.lock, or
# worker-documents.lock for EXTRAS=documents. `make lock` regenerates the locks.
COPY requirements/build.lock requirements/worker.lock requirements/worker-documents.lock ./requirements/
ARG EXTRAS=""
# The documents images draw text previews in DejaVu Sans Mono: its glyphs are rasterised once per
# process (workers/glyphs.py); without it Pillow's own face is proportional and every line is laid
# out and rasterised glyph by glyph, about ten times the cost. Only the face and its licence go
# into the image (the runtime stage installs nothing).
RUN mkdir -p /opt/fonts && if [ "$EXTRAS" = documents ]; then \
        apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-dejavu-core \
        && cp /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf /opt/fonts/ \
        && cp /usr/share/doc/fonts-dejavu-core/copyright /opt/fonts/DejaVu-LICENSE; \
    fi
RUN /opt/venv/bin/pip install --require-hashes --no-deps --only-binary :all: \
        -r requirements/build.lock -r "requirements/worker${EXTRAS:+-$EXTRAS}.lock"
COPY pyproject.toml ./
COPY core ./core
COPY workers ./workers
# The project itself, on the locked dependencies; the installers leave with it.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip uninstall -q -y pip setuptools wheel \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 handin \
    && useradd --system --uid 10001 --gid handin --home-dir /app --shell /usr/sbin/nologin handin \
    && mkdir -p /app/var && chown handin:handin /app/var
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/fonts /usr/share/fonts/truetype/handin
# DEV=1 (skaffold's dev profile only): the app user may overwrite synced .py files.
ARG DEV=""
RUN if [ -n "$DEV" ]; then chown -R handin:handin /opt/venv/lib; fi
WORKDIR /app
# TASK comes last: every layer above is shared by the worker images of one lock (and the
# user layer by every image), so building another task's image costs seconds.
ARG TASK
RUN test -n "$TASK" || { echo "build with --build-arg TASK=<task>" >&2; exit 1; }
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 WORKER_TASK=${TASK}
LABEL org.opencontainers.image.title="handin-worker-${TASK}" org.opencontainers.image.source="https://github.com/handin/handin"
USER 10001:10001
EXPOSE 9100
CMD ["/bin/sh", "-c", "exec handin worker \"$WORKER_TASK\""]
