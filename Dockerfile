# syntax=docker/dockerfile:1
# The one image of both deployables: `artifact-search api|indexer|bootstrap|replay|...`.
# Build: docker build -t prefect-artifact-search .

# ---- build stage: compilers only here ----------------------------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first (cached while only the code changes)
COPY pyproject.toml README.md ./
RUN mkdir -p services indexer query alerts \
 && touch services/__init__.py indexer/__init__.py query/__init__.py alerts/__init__.py \
 && pip install . \
 && pip uninstall -y prefect-artifact-search
COPY services ./services
COPY indexer ./indexer
COPY query ./query
COPY alerts ./alerts
RUN pip install --no-deps . && python -m compileall -q /opt/venv

# ---- final stage: runtime only, non-root -------------------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="prefect-artifact-search" \
      org.opencontainers.image.description="Prefect-compatible artifact search on Kafka and Elasticsearch"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUERY_HOST=0.0.0.0 \
    INDEXER_METRICS_HOST=0.0.0.0
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/app --create-home app \
 && install -d -o 10001 -g 10001 /var/lib/indexer
# the indexer's state store (INDEXER_STATE_DIR) lives on a volume mounted here
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/app
EXPOSE 4200 9464
ENTRYPOINT ["artifact-search"]
CMD ["--help"]
