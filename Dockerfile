# The one image of both deployables: `artifact-search api|indexer|bootstrap|replay|...`.
#   docker build -t prefect-artifact-search .
# Without a public registry (deploy/docker/build.sh does both):
#   --build-arg BASE=<a local image with Python 3.11>   (deploy/docker/build-base.sh makes one)
#   wheels in deploy/docker/wheelhouse/                  -> pip installs offline from them only
# Either way the versions and hashes are those of requirements/runtime.txt and build.txt.
# Runs as uid 10001 and on a read-only root filesystem: the only writable path it needs is the
# indexer's state store, INDEXER_STATE_DIR=/var/lib/indexer/state (a volume).
ARG BASE=python:3.11-slim

# ---- build stage: the virtualenv ---------------------------------------------------------------
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY deploy/docker/wheelhouse/ /wheels/
# dependencies first (cached while only the code changes): exactly the lock's versions, each
# checked against its hashes (requirements/*.txt, written by `make lock`)
COPY requirements/runtime.txt requirements/build.txt ./requirements/
RUN if ls /wheels/*.whl >/dev/null 2>&1; then OFFLINE="--no-index --find-links=/wheels"; else OFFLINE=""; fi \
 && pip install $OFFLINE --require-hashes -r requirements/runtime.txt -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY artifact_search ./artifact_search
COPY services ./services
COPY indexer ./indexer
COPY query ./query
COPY alerts ./alerts
# the project alone, built with the locked setuptools already in the venv
RUN pip install --no-index --no-deps --no-build-isolation . && python -m compileall -q /opt/venv

# ---- final stage: runtime only, non-root -------------------------------------------------------
FROM ${BASE}
LABEL org.opencontainers.image.title="prefect-artifact-search" \
      org.opencontainers.image.description="Prefect-compatible artifact search on Kafka and Elasticsearch"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUERY_HOST=0.0.0.0 \
    INDEXER_METRICS_HOST=0.0.0.0 \
    INDEXER_STATE_DIR=/var/lib/indexer/state
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/app --create-home app \
 && install -d -o 10001 -g 10001 /var/lib/indexer
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/app
# the indexer's state store: mount a volume here (an anonymous one otherwise)
VOLUME ["/var/lib/indexer"]
EXPOSE 4200 9464
ENTRYPOINT ["artifact-search"]
CMD ["--help"]
