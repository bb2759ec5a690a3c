# syntax=docker/dockerfile:1.7
# The api: web pages, JSON API, upload intake; also runs `handin migrate`,
# `handin seed-demo` and the `helm test` upload. Carries no Pillow or pypdfium2.
# Build from the repository root: docker build -f images/api.Dockerfile .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, exactly as locked (versions and file hashes, wheels only): this
# layer is rebuilt only when the lock changes. `make lock` regenerates the locks.
COPY requirements/build.lock requirements/api.lock ./requirements/
RUN /opt/venv/bin/pip install --require-hashes --no-deps --only-binary :all: \
        -r requirements/build.lock -r requirements/api.lock
COPY pyproject.toml ./
COPY core ./core
COPY api ./api
# The project itself, on the locked dependencies; the installers leave with it.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip uninstall -q -y pip setuptools wheel \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 handin \
    && useradd --system --uid 10001 --gid handin --home-dir /app --shell /usr/sbin/nologin handin \
    && mkdir -p /app/var && chown handin:handin /app/var
COPY --from=build /opt/venv /opt/venv
# DEV=1 (skaffold's dev profile only): the app user may overwrite synced .py files.
ARG DEV=""
RUN if [ -n "$DEV" ]; then chown -R handin:handin /opt/venv/lib; fi
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="handin-api" org.opencontainers.image.source="https://github.com/handin/handin"
USER 10001:10001
EXPOSE 8000
CMD ["handin", "api", "--host", "0.0.0.0", "--port", "8000"]
