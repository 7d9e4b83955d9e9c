"""Rebuild the index from the topics into a new index version, then swap the aliases.

`replay()`:

1. finds the next free version N+1 over the three aliases' concrete indices
   (`<alias>-v<N>`) and creates `<alias>-v<N+1>` with the mappings of
   `services/es/indices.py`, without aliases;
2. assigns every partition of the five entity topics to a group-less consumer
   (nothing is committed, the live indexer's group is untouched), captures the
   end offsets, seeks to the beginning and consumes up to those ends, in
   batches, applying each batch with the indexer's own processor in local mode
   (indexer/local.py: one owner of every partition, a throwaway state store in a
   temporary directory) over an `IndexNames` whose write targets are the new
   indices. Poison records are skipped and counted (the live indexer dead-letters them);
3. refreshes the new indices and moves the three aliases in ONE `POST _aliases`
   (remove from the old indices, add to the new with `is_write_index`), which
   Elasticsearch applies atomically: readers see the old index or the new one,
   never a mix and never nothing;
4. deletes the old indices unless `keep_old`.

If anything fails before the swap, the new indices are deleted and the aliases
are untouched. Events published after the captured end offsets are not in the
new version: stop the live indexer before a replay and start it again afterwards.
Its partition epochs now come from the new control index, so it sees that someone
else wrote its documents and rewrites its partitions once from its own state
(docs/propagation.md, "Ownership"); its state itself stays valid.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from indexer.local import LocalPipeline
from indexer.store import RocksStore
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings
from services.errors import PermanentError
from services.es.client import make_es_client
from services.es.indices import IndexNames, index_settings
from services.kafka import producer_kwargs
from services.progress import Progress

log = logging.getLogger("indexer.replay")


@dataclass
class ReplayResult:
    """What a replay did."""

    version: int
    new_indices: list[str]
    old_indices: list[str]
    deleted: list[str]
    records: int = 0
    events: int = 0
    poison: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    seconds: float = 0.0


async def indices_behind(es: AsyncElasticsearch, alias: str) -> list[str]:
    """The concrete indices the alias points at now (empty if the alias does not exist)."""
    if not await es.indices.exists_alias(name=alias):
        return []
    resp = await es.indices.get_alias(name=alias)
    return sorted(resp.body)


async def next_version(es: AsyncElasticsearch, names: IndexNames) -> int:
    """One more than the highest `-v<N>` of any of the three aliases' indices."""
    pattern = ",".join(f"{names.alias(k)}-v*" for k in ("artifacts", "collections", "control"))
    resp = await es.indices.get(
        index=pattern, expand_wildcards="all", allow_no_indices=True, ignore_unavailable=True
    )
    highest = 0
    for index in resp.body:
        for kind in ("artifacts", "collections", "control"):
            match = re.fullmatch(re.escape(names.alias(kind)) + r"-v(\d+)", index)
            if match:
                highest = max(highest, int(match.group(1)))
    return max(highest, names.version - 1) + 1


async def create_version(
    es: AsyncElasticsearch,
    names: IndexNames,
    version: int,
    shards: int,
    replicas: int,
    refresh_interval: str = "1s",
) -> IndexNames:
    """Create the three concrete indices of `version` (no aliases); return names targeting them.
    The artifact and collection indices are refreshed every `refresh_interval` (ADR 0013)."""
    target = names.retarget(version)
    assert target.write_targets is not None
    created: list[str] = []
    try:
        for index in target.write_targets:
            await es.indices.create(
                index=index,
                settings=index_settings(
                    shards, replicas, target.mapping_for(index), refresh_interval
                ),
                mappings=target.mapping_for(index),
            )
            created.append(index)
    except Exception:
        if created:
            await es.indices.delete(index=",".join(created), ignore_unavailable=True)
        raise
    return target


async def swap_aliases(es: AsyncElasticsearch, names: IndexNames, target: IndexNames) -> list[str]:
    """Point the three aliases at `target`'s indices in one atomic request; return the old ones."""
    assert target.write_targets is not None
    actions: list[dict[str, Any]] = []
    old: list[str] = []
    for kind, new_index in zip(
        ("artifacts", "collections", "control"), target.write_targets, strict=True
    ):
        alias = names.alias(kind)
        for index in await indices_behind(es, alias):
            if index != new_index:
                actions.append({"remove": {"index": index, "alias": alias}})
                old.append(index)
        actions.append({"add": {"index": new_index, "alias": alias, "is_write_index": True}})
    await es.indices.update_aliases(actions=actions)
    return old


class _Source:
    """Every partition of the entity topics, from the beginning to the captured end offsets."""

    def __init__(self, kafka: KafkaSettings, batch_size: int) -> None:
        self.kafka = kafka
        self.batch_size = batch_size
        self.consumer = AIOKafkaConsumer(
            **producer_kwargs(kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_size,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.begin: dict[TopicPartition, int] = {}
        self.end: dict[TopicPartition, int] = {}
        self.position: dict[TopicPartition, int] = {}
        self.remaining: set[TopicPartition] = set()

    async def start(self) -> int:
        """Assign, capture offsets, seek to the beginning; return the number of offsets to read."""
        parts = await self._partitions()
        await self.consumer.start()
        self.consumer.assign(parts)
        self.end = dict(await self.consumer.end_offsets(parts))
        self.begin = dict(await self.consumer.beginning_offsets(parts))
        await self.consumer.seek_to_beginning(*parts)
        self.position = dict(self.begin)
        self.remaining = {tp for tp in parts if self.end[tp] > self.begin[tp]}
        done = [tp for tp in parts if tp not in self.remaining]
        if done:
            self.consumer.pause(*done)
        return sum(self.end[tp] - self.begin[tp] for tp in parts)

    async def _partitions(self) -> list[TopicPartition]:
        admin = AIOKafkaAdminClient(**producer_kwargs(self.kafka))
        await admin.start()
        try:
            topics = list(self.kafka.entity_by_topic())
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                raise PermanentError(f"missing topics {missing} (run `bootstrap` first)")
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        parts = []
        for topic in described:
            for part in topic["partitions"]:
                parts.append(TopicPartition(topic["topic"], part["partition"]))
        return sorted(parts)

    def artifact_partitions(self) -> list[int]:
        """The partitions of the artifact topic."""
        topic = self.kafka.topic_for("artifact")
        return sorted(tp.partition for tp in self.end if tp.topic == topic)

    def consumed(self) -> int:
        """Offsets read so far, over every partition."""
        return sum(self.position[tp] - self.begin[tp] for tp in self.position)

    async def batch(self) -> tuple[ConsumerRecord[Any, Any], ...] | None:
        """The next records below the end offsets, or None when every partition is done."""
        while self.remaining:
            data = await self.consumer.getmany(
                *self.remaining, timeout_ms=1000, max_records=self.batch_size
            )
            out: list[ConsumerRecord[Any, Any]] = []
            for tp, msgs in data.items():
                for msg in msgs:
                    if msg.offset < self.end[tp]:
                        out.append(msg)
                if msgs:
                    self.position[tp] = max(self.position[tp], msgs[-1].offset + 1)
            for tp in list(self.remaining):
                if tp not in data:
                    # compaction or transaction markers can leave no record at end - 1
                    self.position[tp] = max(self.position[tp], await self.consumer.position(tp))
                if self.position[tp] >= self.end[tp]:
                    self.position[tp] = self.end[tp]
                    self.remaining.discard(tp)
                    self.consumer.pause(tp)
            if out:
                return tuple(out)
        return None

    async def stop(self) -> None:
        await self.consumer.stop()


async def replay(
    kafka: KafkaSettings,
    es_settings: ElasticsearchSettings,
    settings: IndexerSettings,
    *,
    batch_size: int | None = None,
    keep_old: bool = False,
    shards: int | None = None,
    replicas: int | None = None,
    stream: TextIO | None = None,
) -> ReplayResult:
    """Rebuild into the next index version and swap the aliases (see the module docstring)."""
    started = time.monotonic()
    names = IndexNames(es_settings.index_prefix)
    es = make_es_client(es_settings)
    source = _Source(kafka, batch_size or settings.max_batch)
    target: IndexNames | None = None
    swapped = False
    scratch = tempfile.TemporaryDirectory(prefix="replay-state-")
    try:
        version = await next_version(es, names)
        target = await create_version(
            es,
            names,
            version,
            shards or es_settings.number_of_shards,
            es_settings.number_of_replicas if replicas is None else replicas,
            es_settings.refresh_interval,
        )
        assert target.write_targets is not None
        result = ReplayResult(version, list(target.write_targets), [], [])
        log.info("replay into version %d", version, extra={"indices": result.new_indices})
        total = await source.start()
        progress = Progress(f"replay v{version}", total, stream)
        pipeline = LocalPipeline(
            es,
            target,
            kafka,
            RocksStore(scratch.name),
            partitions=source.artifact_partitions(),
            group=kafka.group_id,
            settings=settings,
        )
        try:
            while (records := await source.batch()) is not None:
                step = await pipeline.apply(records)
                result.records += len(records)
                result.events += sum(step.output.events.values())
                result.batches += 1
                progress.update(source.consumed(), note=f"poison {len(pipeline.poison)}")
            await pipeline.finish()
        finally:
            pipeline.store.close()
        result.poison.update(p.reason for p in pipeline.poison)
        progress.done = source.consumed()
        progress.finish()
        await es.indices.refresh(index=",".join(target.write_targets))
        result.old_indices = await swap_aliases(es, names, target)
        swapped = True
        if result.old_indices and not keep_old:
            await es.indices.delete(index=",".join(result.old_indices), ignore_unavailable=True)
            result.deleted = list(result.old_indices)
        result.seconds = time.monotonic() - started
        log.info(
            "replay done",
            extra={
                "version": version,
                "records": result.records,
                "events": result.events,
                "poison": dict(result.poison),
                "old_indices": result.old_indices,
                "deleted": result.deleted,
            },
        )
        return result
    finally:
        try:
            await source.stop()
        finally:
            if target is not None and target.write_targets and not swapped:
                log.error("replay failed: deleting the new indices; the aliases are unchanged")
                await es.indices.delete(
                    index=",".join(target.write_targets), ignore_unavailable=True
                )
            await es.close()
            scratch.cleanup()
