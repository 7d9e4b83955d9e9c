"""The shared library: settings, the event contract, Prefect's filter and sort models, the
denormalized documents, index definitions, Kafka and Elasticsearch clients, the workers'
health and metrics server, backfill and live sync from Prefect.

The bottom layer: it imports none of `indexer`, `query`, `alerts` or `artifact_search`
(`tests/unit/test_layering.py`).
"""
