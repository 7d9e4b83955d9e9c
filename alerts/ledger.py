"""Elasticsearch adapter: the alert ledger (`<prefix>alert-ledger`), what makes alerts once.

Every alert is first *claimed*: a `create` of the document `_id` = alert id, state
`pending`, with the alert message and the claim time. Elasticsearch answers 201 to exactly
one claim of an id, ever, and 409 to every other: only the claimant publishes. After Kafka
acknowledged the alert, its document becomes `published` and is never published again —
whatever redelivers or replays the change.

The mark rewrites the whole entry with a compare-and-set on the sequence number the claim
(or take-over) answered, rather than a partial `update`: an update reads the document first,
and reading a document written a moment ago makes Elasticsearch refresh the shard; the
rewrite costs no read (a benchmark batch of 1,000 marks: 0.7-1.3 s against 1.5-2.1 s on a
loaded machine). A mark refused with a conflict means the entry changed meanwhile (taken
over by another worker, or pruned with its saved search): that worker marks it, or nothing
is owed.

A claim is a lease of `ALERTS_CLAIM_TIMEOUT_S`: a claimant that died between its claim and
the mark leaves a `pending` document. Once the lease expired, any worker may take it over
with a compare-and-set on the document's sequence number (one winner) and publish the
stored message: on a later redelivery of the change (`claim`) or by the periodic sweep
(`take_abandoned`). An alert can therefore be published twice only if a live claimant
takes longer than the lease between claim and mark (docs/adr/0008-alerts-without-percolator.md).

Pruning: this Elasticsearch has no `_delete_by_query` (it lives in the `reindex` module,
which the distribution lacks), so `delete_matching` walks a point in time in `_shard_doc`
order and deletes each page of ids with one `_bulk`. The API removes a deleted saved
search's entries at once (`delete_search`); the worker's periodic `prune` removes entries
older than the retention and entries of saved searches that no longer exist (a claim the
worker made while the search was being deleted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elasticsearch import AsyncElasticsearch

from alerts.model import PUBLISHED, AlertMessage, is_abandoned, ledger_source
from services.errors import TransientError

SWEEP_SIZE = 500
DELETE_PAGE = 1_000
PIT_KEEP_ALIVE = "1m"


class LedgerError(TransientError):
    """Elasticsearch refused a ledger write for another reason than a conflict (retried)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """An alert this worker holds the claim of: publish `message`, then `mark_published`
    (the entry's sequence number and primary term as the claim left them)."""

    message: AlertMessage
    seq_no: int
    primary_term: int
    claimed_us: int


class Ledger:
    """Claims, take-overs and publication marks of alerts."""

    def __init__(self, es: AsyncElasticsearch, index: str, claim_timeout_s: float = 60.0) -> None:
        self.es = es
        self.index = index
        self.timeout_us = int(claim_timeout_s * 1_000_000)

    async def claim(self, messages: Sequence[AlertMessage], now_us: int) -> list[Claimed]:
        """The alerts this worker must publish now: those it newly claimed, and those whose
        earlier claimant abandoned them (taken over)."""
        if not messages:
            return []
        unique = {m.alert_id: m for m in messages}
        operations: list[dict[str, Any]] = []
        for alert_id, message in unique.items():
            operations.append({"create": {"_index": self.index, "_id": alert_id}})
            operations.append(ledger_source(message, now_us))
        resp = await self.es.bulk(operations=operations)
        fresh: list[Claimed] = []
        claimed_before: list[str] = []
        for alert_id, item in zip(unique, resp["items"], strict=True):
            result = item["create"]
            status = int(result.get("status", 500))
            if status == 201:
                fresh.append(_claimed(unique[alert_id], result, now_us))
            elif status == 409:
                claimed_before.append(alert_id)
            else:
                raise LedgerError(f"the alert ledger refused a claim: {result.get('error')}")
        taken = await self._take_over(await self._abandoned_of(claimed_before, now_us), now_us)
        return fresh + [_claimed(unique[a], result, now_us) for a, result in taken.items()]

    async def _abandoned_of(
        self, alert_ids: Sequence[str], now_us: int
    ) -> list[tuple[str, int, int]]:
        if not alert_ids:
            return []
        resp = await self.es.mget(
            index=self.index, ids=list(alert_ids), source_includes=["state", "claimed_us"]
        )
        return [
            (doc["_id"], doc["_seq_no"], doc["_primary_term"])
            for doc in resp["docs"]
            if doc.get("found") and is_abandoned(doc["_source"], now_us, self.timeout_us)
        ]

    async def _take_over(
        self, stale: Sequence[tuple[str, int, int]], now_us: int
    ) -> dict[str, dict[str, Any]]:
        """Renew abandoned claims by compare-and-set; return the ids this worker won (with
        the bulk item of each: its new sequence number)."""
        if not stale:
            return {}
        operations: list[dict[str, Any]] = []
        for alert_id, seq_no, term in stale:
            operations.append(
                {
                    "update": {
                        "_index": self.index,
                        "_id": alert_id,
                        "if_seq_no": seq_no,
                        "if_primary_term": term,
                    }
                }
            )
            operations.append({"doc": {"claimed_us": now_us}})
        resp = await self.es.bulk(operations=operations)
        won: dict[str, dict[str, Any]] = {}
        for (alert_id, _, _), item in zip(stale, resp["items"], strict=True):
            status = int(item["update"].get("status", 500))
            if status == 200:
                won[alert_id] = item["update"]
            elif status != 409:  # 409: another worker took it over first
                raise LedgerError(f"taking over a claim failed: {item['update'].get('error')}")
        return won

    async def take_abandoned(self, now_us: int) -> list[Claimed]:
        """Abandoned claims (up to `SWEEP_SIZE`), taken over: the caller publishes them."""
        resp = await self.es.search(
            index=self.index,
            query={
                "bool": {
                    "filter": [
                        {"term": {"state": "pending"}},
                        {"range": {"claimed_us": {"lte": now_us - self.timeout_us}}},
                    ]
                }
            },
            size=SWEEP_SIZE,
            seq_no_primary_term=True,
            source_includes=["message"],
            track_total_hits=False,
        )
        hits = resp["hits"]["hits"]
        won = await self._take_over(
            [(h["_id"], h["_seq_no"], h["_primary_term"]) for h in hits], now_us
        )
        return [
            _claimed(AlertMessage.model_validate(h["_source"]["message"]), won[h["_id"]], now_us)
            for h in hits
            if h["_id"] in won
        ]

    async def mark_published(self, claims: Sequence[Claimed]) -> None:
        """Kafka acknowledged these alerts: never publish them again (see the module
        docstring: a rewrite by compare-and-set, a conflict is someone else's entry)."""
        if not claims:
            return
        operations: list[dict[str, Any]] = []
        for claim in claims:
            operations.append(
                {
                    "index": {
                        "_index": self.index,
                        "_id": claim.message.alert_id,
                        "if_seq_no": claim.seq_no,
                        "if_primary_term": claim.primary_term,
                    }
                }
            )
            operations.append(ledger_source(claim.message, claim.claimed_us) | {"state": PUBLISHED})
        resp = await self.es.bulk(operations=operations)
        failed = [i["index"] for i in resp["items"] if i["index"].get("status") not in (200, 409)]
        if failed:
            raise LedgerError(f"marking alerts published failed: {failed[:3]}")

    async def delete_matching(self, query: dict[str, Any]) -> int:
        """Delete every ledger document `query` matches; return how many were deleted."""
        opened = await self.es.open_point_in_time(index=self.index, keep_alive=PIT_KEEP_ALIVE)
        pit_id = str(opened["id"])
        deleted = 0
        after: list[Any] | None = None
        try:
            while True:
                page: dict[str, Any] = {
                    "query": query,
                    "size": DELETE_PAGE,
                    "sort": [{"_shard_doc": "asc"}],
                    "_source": False,
                    "track_total_hits": False,
                    "pit": {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE},
                }
                if after is not None:
                    page["search_after"] = after
                resp = await self.es.search(body=page)
                pit_id = str(resp.get("pit_id", pit_id))
                hits = resp["hits"]["hits"]
                if not hits:
                    return deleted
                operations = [{"delete": {"_index": h["_index"], "_id": h["_id"]}} for h in hits]
                result = await self.es.bulk(operations=operations)
                for item in result["items"]:
                    status = int(item["delete"].get("status", 500))
                    if status == 200:
                        deleted += 1
                    elif status != 404:  # 404: deleted meanwhile (another pruner)
                        raise LedgerError(
                            f"deleting ledger entries failed: {item['delete'].get('error')}"
                        )
                after = hits[-1]["sort"]
        finally:
            await self.es.close_point_in_time(id=pit_id)

    async def delete_search(self, search_id: str) -> int:
        """Forget every alert of a deleted saved search."""
        return await self.delete_matching({"term": {"search_id": search_id}})

    async def prune(
        self, live_search_ids: Sequence[str], orphans_before_us: int, older_than_us: int | None
    ) -> int:
        """Delete entries of saved searches not in `live_search_ids` claimed before
        `orphans_before_us` (when the list was read, less a margin: a search created since
        may already have claims), and published entries claimed before `older_than_us`
        (None: kept for ever; pending claims are never pruned by age, their publication is
        still owed)."""
        should: list[dict[str, Any]] = [
            {
                "bool": {
                    "filter": [{"range": {"claimed_us": {"lt": orphans_before_us}}}],
                    "must_not": [{"terms": {"search_id": list(live_search_ids)}}],
                }
            }
        ]
        if older_than_us is not None:
            should.append(
                {
                    "bool": {
                        "filter": [
                            {"range": {"claimed_us": {"lt": older_than_us}}},
                            {"term": {"state": PUBLISHED}},
                        ]
                    }
                }
            )
        return await self.delete_matching({"bool": {"should": should, "minimum_should_match": 1}})


def _claimed(message: AlertMessage, result: dict[str, Any], claimed_us: int) -> Claimed:
    """A won claim from its bulk item (`create` or take-over `update`)."""
    return Claimed(message, int(result["_seq_no"]), int(result["_primary_term"]), claimed_us)
