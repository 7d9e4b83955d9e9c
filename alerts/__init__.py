"""Saved searches and their alerts: the third deployable (`artifact-search alerts`).

`model` and `egress` (pure: saved searches, change records, alert messages, evaluation
bodies; where webhooks may go), `ledger`, `searches` and `evaluator` (Elasticsearch
adapters), `kafka_io` (the Kafka consume/produce lifecycle), `worker` (the change feed in,
alerts out), `webhooks` (alerts in, HTTP POSTs out, dead letters), `app` (the composition
root). Design: docs/adr/0008-alerts-without-percolator.md.
"""
