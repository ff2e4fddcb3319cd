# The service image: API, worker and Docker security proxy (one image, three commands; see
# docker-compose.yml). One Dockerfile, two ways to get the Python packages:
#   - `docker build .` on a machine whose builds reach PyPI: pip installs requirements.txt
#     from the index (wheelhouse/ is absent or empty);
#   - offline, where builds reach no index (as on the project's own machines): `make
#     service-image` first fills wheelhouse/ on the host with the wheels of requirements.txt,
#     and pip installs from there only (--no-index). The host's Python must be the image's
#     minor version (3.11) for wheels of compiled packages to fit.
# Works with the classic builder as well as BuildKit.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# A virtualenv of our own: on the official image venv just works; Debian's python3 (a base made
# with debootstrap) needs python3-venv and refuses pip installs into the system.
RUN python3 -m venv /opt/venv 2>/dev/null || { \
        rm -rf /opt/venv \
        && apt-get update \
        && apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/* \
        && python3 -m venv /opt/venv; }
# `wheelhouse*` matches nothing on a fresh clone: then only requirements.txt is copied.
COPY requirements.txt wheelhouse* /build/
RUN set -e; \
    if ls /build/*.whl >/dev/null 2>&1; then \
        echo "installing offline from wheelhouse/"; \
        /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
            --find-links /build -r /build/requirements.txt; \
    else \
        echo "wheelhouse/ is empty: installing from the package index"; \
        /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
            -r /build/requirements.txt; \
    fi; \
    /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${BASE}
LABEL org.opencontainers.image.title="executor-service" \
      org.opencontainers.image.description="Executor Service: API, Celery worker and Docker security proxy"
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PORT=8083 \
    EXECUTOR_LOG_FORMAT=json
RUN groupadd --gid 10000 executor \
 && useradd --uid 10000 --gid 10000 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin executor
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# gunicorn.conf.py* : copied when present (gunicorn reads it from the working directory).
COPY api.py worker.py gunicorn.conf.py* /app/
COPY executor/ /app/executor/
RUN python -m compileall -q /app
USER 10000:10000
EXPOSE 8083
CMD ["sh", "-c", "exec gunicorn -b 0.0.0.0:${PORT} api:app"]
