"""Saved searches and their alerts: the third deployable (`artifact-search alerts`).

`model` (pure: saved searches, change records, alert messages, evaluation bodies),
`ledger` and `searches` (Elasticsearch adapters), `worker` (the change feed in, alerts
out), `webhooks` (alerts in, HTTP POSTs out, dead letters), `app` (the composition root).
Design: docs/adr/0008-alerts-without-percolator.md.
"""
