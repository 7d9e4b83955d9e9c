"""Where the indexer's CPU goes, without Kafka or Elasticsearch.

`python -m tests.benchmarks.profile_engine [--artifacts N] [--noisy] [--profile FILE]`
(`make profile-engine`): the generator's stream for N artifacts (parents first, as the
app's catch-up delivers them) through the real `Processor` over a real RocksDB store, in
steps of `--batch` records, with the app's own `BulkWriter` serializing every `_bulk` body
to a sink that answers "no errors". Collection members go round the way the app sends them
through the member topic: published by a step, encoded, and applied by a later step as
records. Prints CPU seconds per 1,000 records and writes per final document; with
`--profile`, a pyinstrument profile of the steps (the generator is left out).

What this leaves out, and the running app pays on top: the Kafka consumer and producer,
FastStream, and the Elasticsearch client's HTTP round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import HARD, NONE, Record, dataset_records
from indexer.collections import Member
from indexer.local import LocalRecord
from indexer.runtime import GC_THRESHOLDS, Processor
from indexer.step import Poison, Topology
from indexer.store import RocksStore
from indexer.writer import BulkWriter
from services.config import KafkaSettings

KAFKA = KafkaSettings()
PARTITIONS = 3


@dataclass
class Sink:
    """`es.bulk` that parses nothing and fails nothing: counts requests, bytes and lines."""

    requests: int = 0
    bytes: int = 0
    documents: int = 0

    async def bulk(self, body: bytes, **_: Any) -> dict[str, Any]:
        self.requests += 1
        self.bytes += len(body)
        self.documents += body.count(b"\n") // 2
        return {"errors": False}


@dataclass
class Members:
    """The member topic: what steps publish, numbered per partition like Kafka would."""

    waiting: list[tuple[int, Member]] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)

    async def publish(self, members: Sequence[tuple[int, Member]]) -> None:
        self.waiting.extend(members)

    def take(self) -> list[LocalRecord]:
        out = []
        for q, member in self.waiting:
            offset = self.offsets.get(q, 0)
            self.offsets[q] = offset + 1
            value = orjson.dumps(member.encode())
            out.append(LocalRecord(KAFKA.members_topic, q, offset, member.record_key(), value))
        self.waiting.clear()
        return out


def numbered(records: Sequence[Record]) -> list[LocalRecord]:
    """Records with the partitions and offsets Kafka's default partitioner would give."""
    import zlib

    offsets: dict[tuple[str, int], int] = {}
    out = []
    for entity, key, value in records:
        topic = KAFKA.topic_for(entity)
        partition = zlib.crc32(key) % PARTITIONS
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(LocalRecord(topic, partition, offset, key, value))
    return out


async def run(records: list[LocalRecord], state: Path, batch: int) -> tuple[float, Sink, int, int]:
    """(CPU seconds of every step, the sink, records applied including member records,
    bytes of the keys and values in the state store at the end)."""
    sink = Sink()
    members = Members()
    store = RocksStore(state, sync=False)
    topology = Topology(
        parents={t: e for t, e in KAFKA.entity_by_topic().items() if e != "artifact"},
        artifacts=KAFKA.topic_for("artifact"),
        members=KAFKA.members_topic,
        member_partitions=PARTITIONS,
    )

    class Epochs:
        async def acquire(self, topic: str, partition: int) -> tuple[int, str]:
            return 1, "control"

    async def dead(item: Poison) -> None:
        raise AssertionError(f"the generator's stream has no poison: {item.reason}")

    processor = Processor(
        store,
        topology,
        BulkWriter(sink, 1000, 2),  # type: ignore[arg-type]  # the sink stands in for the client
        Epochs(),
        {"artifact": "artifacts", "collection": "collections"}.__getitem__,
        members.publish,
        dead,
    )
    processor.assigned(
        [(KAFKA.topic_for("artifact"), p) for p in range(PARTITIONS)]
        + [(KAFKA.members_topic, q) for q in range(PARTITIONS)]
    )
    artifacts = KAFKA.topic_for("artifact")
    order = [r for r in records if r.topic != artifacts] + [
        r for r in records if r.topic == artifacts
    ]
    applied = 0
    started = time.process_time()
    for start in range(0, len(order), batch):
        await processor.process(order[start : start + batch], 0)
        applied += min(batch, len(order) - start)
        while members.waiting:
            taken = members.take()
            for part in range(0, len(taken), batch):
                await processor.process(taken[part : part + batch], 0)
            applied += len(taken)
    while await processor.drain() is not None:
        pass
    cpu = time.process_time() - started
    state_bytes = sum(len(key) + len(value) for key, value in store.scan(b""))
    store.close()
    return cpu, sink, applied, state_bytes


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)  # as the indexer command runs
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--noisy", action="store_true", help="the noisy stream (HARD noise)")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument text profile here")
    args = parser.parse_args()
    dataset = generate_dataset(args.seed, DatasetScale.for_artifacts(args.artifacts))
    records = numbered(dataset_records(dataset, args.seed, HARD if args.noisy else NONE))
    final = len(dataset.artifacts) + len(dataset.collections())
    state = Path(tempfile.mkdtemp(prefix="profile-engine-"))
    try:
        if args.profile is None:
            cpu, sink, applied, state_bytes = asyncio.run(run(records, state, args.batch))
        else:
            from pyinstrument import Profiler

            with Profiler(async_mode="disabled") as profiler:
                cpu, sink, applied, state_bytes = asyncio.run(run(records, state, args.batch))
            text = profiler.output_text(unicode=True, show_all=False)
            root = str(Path(__file__).resolve().parents[2]) + "/"
            args.profile.write_text(text.replace(root, ""))  # paths relative to the repository
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(
        json.dumps(
            {
                "artifacts": args.artifacts,
                "noisy": args.noisy,
                "records": len(records),
                "records_applied_with_members": applied,
                "final_documents": final,
                "documents_written": sink.documents,
                "writes_per_final_document": round(sink.documents / final, 3),
                "bulk_requests": sink.requests,
                "bulk_mb": round(sink.bytes / 1e6, 1),
                "cpu_s": round(cpu, 2),
                "cpu_ms_per_1000_records": round(cpu / len(records) * 1e6, 1),
                "records_per_cpu_s": round(len(records) / cpu),
                "state_bytes_per_final_document": round(state_bytes / final),
            }
        )
    )


if __name__ == "__main__":
    main()
