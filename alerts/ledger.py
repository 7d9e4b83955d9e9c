"""Elasticsearch adapter: the alert ledger (`<prefix>alert-ledger`), what makes alerts once.

Every match is first *claimed*: a `create` of the document `_id` = alert id, state
`pending`. Elasticsearch answers 201 to exactly one claim of an id, ever; 409 to every
other. A match is published when its claim is new, or when the existing claim is still
`pending` (an earlier attempt died before Kafka acknowledged it); after Kafka acknowledged
the alerts their claims become `published`, and a `published` claim is never published
again — whatever redelivers or replays the change (docs/adr/0008-alerts-without-percolator.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elasticsearch import AsyncElasticsearch

from alerts.model import Match, ledger_source
from services.errors import TransientError

PENDING, PUBLISHED = "pending", "published"


class LedgerError(TransientError):
    """Elasticsearch refused a ledger write for another reason than a conflict (retried)."""


class Ledger:
    """Claims and publication marks of alerts."""

    def __init__(self, es: AsyncElasticsearch, index: str) -> None:
        self.es = es
        self.index = index

    async def claim(self, matches: Sequence[Match], created_us: int) -> list[Match]:
        """The matches to publish now: newly claimed ones and claims still pending."""
        if not matches:
            return []
        unique = list({m.alert_id: m for m in matches}.values())
        operations: list[dict[str, Any]] = []
        for match in unique:
            operations.append({"create": {"_index": self.index, "_id": match.alert_id}})
            operations.append(ledger_source(match, created_us))
        resp = await self.es.bulk(operations=operations)
        fresh: list[Match] = []
        existing: list[Match] = []
        for match, item in zip(unique, resp["items"], strict=True):
            result = item["create"]
            status = int(result.get("status", 500))
            if status == 201:
                fresh.append(match)
            elif status == 409:
                existing.append(match)
            else:
                raise LedgerError(f"the alert ledger refused a claim: {result.get('error')}")
        return fresh + await self._pending(existing)

    async def _pending(self, matches: Sequence[Match]) -> list[Match]:
        if not matches:
            return []
        resp = await self.es.mget(
            index=self.index, ids=[m.alert_id for m in matches], source_includes=["state"]
        )
        state = {
            doc["_id"]: doc.get("_source", {}).get("state") for doc in resp["docs"] if doc["found"]
        }
        return [m for m in matches if state.get(m.alert_id) == PENDING]

    async def mark_published(self, alert_ids: Sequence[str]) -> None:
        """Kafka acknowledged these alerts: never publish them again."""
        if not alert_ids:
            return
        operations: list[dict[str, Any]] = []
        for alert_id in alert_ids:
            operations.append({"update": {"_index": self.index, "_id": alert_id}})
            operations.append({"doc": {"state": PUBLISHED}})
        resp = await self.es.bulk(operations=operations)
        if resp.get("errors"):
            failed = [i["update"].get("error") for i in resp["items"] if "error" in i["update"]]
            raise LedgerError(f"marking alerts published failed: {failed[:3]}")
