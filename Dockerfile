# syntax=docker/dockerfile:1
# One image for every part of memcached-operator; the subcommand picks the service:
#   docker run IMAGE watcher | reconciler | status | audit --follow
# The deploy/ manifests run it with args ["watcher"], ["reconciler"] or ["status"].
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY deploy/base ./deploy/base
# A regular (not editable) install of the wheel's one package, memcached_operator, without extras
# (no local-cluster tooling, no cryptography); pip compiles the bytecode here, because the root
# file system is read-only at run time.
RUN /opt/venv/bin/pip install . && /opt/venv/bin/memcached-operator --help > /dev/null

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --gid 65532 mcop \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mcop
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json
# Numeric, so that runAsNonRoot can check it.
USER 65532:65532
# Health and metrics: watcher 8081, reconciler 8082, status 8083 (HEALTH_PORT).
EXPOSE 8081 8082 8083
ENTRYPOINT ["memcached-operator"]
CMD ["watcher"]
