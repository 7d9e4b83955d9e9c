"""The AsyncAPI document of the alerting topics: `python -m alerts.asyncapi [PATH]`.

Three topics: the indexer's change feed (produced by the indexer with
`INDEXER_PUBLISH_CHANGES=true`, consumed by the alerts worker), the alert topic (the
product: consume it), and the alert dead letters (webhook deliveries that failed for good).
The checked-in copy is docs/asyncapi-alerts.json; a unit test regenerates it and requires
it to be identical.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from alerts.model import AlertMessage
from services.changes import ChangeRecord
from services.config import KafkaSettings

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi-alerts.json"


def asyncapi_json(kafka: KafkaSettings | None = None) -> str:
    """The document for default (or given) settings, as stable JSON."""
    k = kafka or KafkaSettings(bootstrap_servers="kafka:9092")
    broker = KafkaBroker(k.bootstrap_servers, logger=logging.getLogger("alerts.asyncapi"))
    broker.publisher(
        k.changes_topic,
        title=f"{k.changes_topic}:changes",
        description=(
            "The indexer's change feed: after Elasticsearch accepted a step's writes and "
            "before the step is committed, the artifact documents (`a`) and collection "
            "documents (`c`) it wrote and their Elasticsearch versions, up to 500 per "
            "record, no key. At-least-once: a crashed "
            "step is re-applied and published again. Internal to the service (do not produce)."
        ),
        schema=ChangeRecord,
    )
    broker.publisher(
        k.alerts_topic,
        title=f"{k.alerts_topic}:alerts",
        description=(
            "One record per new match of a saved search: an artifact version that matches "
            "it, announced once per (saved search, query fingerprint, artifact id, artifact "
            "version). Key: the saved search id (a search's alerts stay in order); header "
            "`alert_id`, the same as the value's `alert_id` (deterministic: deduplicate by "
            "it). The value is also the body POSTed to the saved search's webhook."
        ),
        schema=AlertMessage,
    )
    broker.publisher(
        k.alerts_dlq_topic,
        title=f"{k.alerts_dlq_topic}:dead-letters",
        description=(
            "Alerts whose webhook failed ALERTS_WEBHOOK_ATTEMPTS times, or whose webhook "
            "host ALERTS_WEBHOOK_ALLOWED_HOSTS does not allow (never called): the alert "
            "record's value unchanged, key the alert id, headers dlq.reason (`webhook` or "
            "`webhook-not-allowed`), dlq.detail (`HTTP 500`, the error's name, or the "
            "refusal), dlq.attempts (0 when not allowed), dlq.saved_search_id, dlq.topic, "
            "dlq.partition, dlq.offset."
        ),
        schema=AlertMessage,
    )
    app = FastStream(
        broker,
        specification=AsyncAPI(
            title="Prefect artifact search: saved-search alerts",
            version="1.0.0",
            description="The change feed and the alert topics (docs/search.md, ADR 0008).",
        ),
    )
    spec = app.schema.to_specification().to_jsonable()
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Write the document to the given path (default docs/asyncapi-alerts.json)."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    path.write_text(asyncapi_json())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
