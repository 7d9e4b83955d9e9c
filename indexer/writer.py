"""Elasticsearch adapter of the indexer: blind writes with external versions, and epochs.

Every document is written whole with `version_type=external`: no read before a write, as
Kafka Connect's Elasticsearch sink does. The version is `epoch << 40 | sequence`
(`version_of`): the epoch of the partition that owns the document, taken with
compare-and-set when the partition was assigned (`ControlEpochs`), then a counter of this
process. A replica that lost its partitions (a zombie) writes with an older epoch, so
Elasticsearch answers 409 wherever the new owner has written; a 409 therefore means
"already superseded" and is not an error. Deleted artifacts and collections stay as
`live: false` markers, never real deletes: Elasticsearch forgets a deleted document's
version after `index.gc_deletes`, and a late zombie write could then resurrect it.

Bulk failures are data: per-item 409s are counted, 429 and 5xx raise `TransientError`
(the runtime retries the same writes, which is harmless), and any other item error
raises `WriteRejectedError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from elasticsearch import ApiError, AsyncElasticsearch, TransportError
from elasticsearch import ConnectionError as EsConnectionError

from indexer.metrics import BULK_SECONDS
from services.errors import PermanentError, TransientError

SEQUENCE_BITS = 40
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_EPOCH = (1 << (63 - SEQUENCE_BITS)) - 1


def version_of(epoch: int, sequence: int) -> int:
    """The external version of a write: epoch first, so a newer owner always wins."""
    if not 0 < epoch <= MAX_EPOCH or not 0 <= sequence <= MAX_SEQUENCE:
        raise PermanentError(f"version out of range: epoch {epoch}, sequence {sequence}")
    return (epoch << SEQUENCE_BITS) | sequence


def _action(index: str, doc_id: str, version: int) -> bytes:
    """The `_bulk` action line of an externally versioned index operation."""
    return b'{"index":{"_index":%b,"_id":%b,"version":%d,"version_type":"external"}}' % (
        orjson.dumps(index),
        orjson.dumps(doc_id),
        version,
    )


class WriteRejectedError(TransientError):
    """Elasticsearch refused a document for a reason no retry is known to fix (a bug or a
    mapping problem): retried with backoff so the partition stalls visibly, never skipped."""


@dataclass(frozen=True, slots=True)
class Versioned:
    """One document write with its external version."""

    index: str
    doc_id: str
    version: int
    source: dict[str, Any]


@dataclass
class WriteStats:
    """What a write round did."""

    written: int = 0
    superseded: int = 0


class BulkWriter:
    """Writes `Versioned` documents in `_bulk` chunks, at most `concurrency` in flight."""

    def __init__(self, es: AsyncElasticsearch, chunk: int = 1000, concurrency: int = 2) -> None:
        self.es = es
        self.chunk = chunk
        self.concurrency = concurrency

    async def write(self, writes: Sequence[Versioned]) -> WriteStats:
        """Write everything; raises `TransientError` when a retry may succeed."""
        stats = WriteStats()
        if not writes:
            return stats
        gate = asyncio.Semaphore(self.concurrency)

        async def run(part: Sequence[Versioned]) -> None:
            async with gate:
                await self._chunk(part, stats)

        chunks = [writes[i : i + self.chunk] for i in range(0, len(writes), self.chunk)]
        await asyncio.gather(*(run(part) for part in chunks))
        return stats

    async def _chunk(self, part: Sequence[Versioned], stats: WriteStats) -> None:
        lines: list[bytes] = []
        for item in part:
            lines.append(_action(item.index, item.doc_id, item.version))
            lines.append(orjson.dumps(item.source))
        body = b"\n".join(lines) + b"\n"
        try:
            with BULK_SECONDS.time():
                resp = await self.es.bulk(
                    body=body,  # type: ignore[arg-type]  # NDJSON bytes, serialized once
                    refresh=False,
                    filter_path="errors,items.*.status,items.*.error",
                )
        except (TransportError, EsConnectionError) as exc:
            raise TransientError(f"bulk failed: {exc}") from exc
        except ApiError as exc:  # the whole request refused: 429 and 5xx are expected
            if exc.status_code == 429 or exc.status_code >= 500:
                raise TransientError(f"bulk refused: {exc.status_code} {exc.error}") from exc
            raise WriteRejectedError(f"bulk refused: {exc.status_code} {exc.error}") from exc
        if not resp.get("errors"):
            stats.written += len(part)
            return
        for item, result in zip(part, resp["items"], strict=True):
            ((_, info),) = result.items()
            status = int(info.get("status", 500))
            if status < 300:
                stats.written += 1
            elif status == 409:
                stats.superseded += 1
            elif status == 429 or status >= 500:
                raise TransientError(f"bulk item {item.doc_id}: {status} {info.get('error')}")
            else:
                raise WriteRejectedError(
                    f"{item.index}/{item.doc_id} refused: {status} {str(info.get('error'))[:500]}"
                )


class ControlEpochs:
    """Partition epochs in the control index: one compare-and-set counter per partition.

    Taken when a partition is assigned; also used to tell whether anyone else owned the
    partition since this replica last did (the epoch then jumped by more than one).
    """

    def __init__(self, es: AsyncElasticsearch, index: str, group: str) -> None:
        self.es = es
        self.index = index
        self.group = group

    async def acquire(self, topic: str, partition: int) -> tuple[int, str]:
        """(new epoch, control index uuid) for a partition; retries lost races."""
        doc_id = f"epoch:{self.group}:{topic}:{partition}"
        try:
            for _ in range(100):
                got = await self.es.options(ignore_status=404).get(
                    index=self.index, id=doc_id, realtime=True
                )
                if got.get("found"):
                    epoch = int(got["_source"]["epoch"]) + 1
                    cas: dict[str, Any] = {
                        "if_seq_no": got["_seq_no"],
                        "if_primary_term": got["_primary_term"],
                    }
                else:
                    epoch, cas = 1, {"op_type": "create"}
                resp = await self.es.options(ignore_status=409).index(
                    index=self.index,
                    id=doc_id,
                    document={"epoch": epoch, "group": self.group, "topic": topic},
                    refresh=False,
                    **cas,
                )
                if resp.meta.status < 300:
                    return epoch, await self._uuid()
            raise TransientError(f"epoch of {topic}:{partition}: too many concurrent owners")
        except (TransportError, EsConnectionError, ApiError) as exc:
            raise TransientError(f"epoch of {topic}:{partition}: {exc}") from exc

    async def _uuid(self) -> str:
        settings = await self.es.indices.get_settings(index=self.index, name="index.uuid")
        ((_, body),) = settings.body.items()
        return str(body["settings"]["index"]["uuid"])
