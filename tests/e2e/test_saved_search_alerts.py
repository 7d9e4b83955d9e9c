"""Saved searches and alerts end to end: events through the real Kafka and the FastStream
indexer (publishing its change feed), the alerts worker, a real HTTP webhook receiver.

Three saved searches: S1 (`revenue` in artifacts of FAILED flow runs, webhook that answers
200), S2 (`metadata.accuracy >= 0.9`, webhook that always answers 500) and S3 (`costs`,
webhook that fails twice, then answers 200). Five artifacts,
some matching, then a flow run that turns FAILED (an existing artifact starts matching
S1), then a new version of a matching artifact. Expected alerts are written down by hand.
Then the worker's group is rewound to the start of the change feed and the worker
restarted: nothing is announced again, except a claim abandoned by a dead worker (written
into the ledger by the test), which is published once. S4, stored around the API, has a
webhook host ALERTS_WEBHOOK_ALLOWED_HOSTS does not allow: its alert is dead-lettered
unsent. Further tests: latest_per_key searches, `notify_existing` scans, and the CRUD
errors (including a disallowed webhook host and the ledger entries a delete removes).
Waits are bounded and driven by progress (alerts seen, committed offsets), never by the
clock (tests/waiting.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from elasticsearch import AsyncElasticsearch

from alerts import metrics
from alerts.app import AlertsService
from alerts.model import SavedSearchIn, alert_id, index_source, saved_search_doc
from artifact_search.api import create_api
from indexer.app import Indexer
from query.extension import SearchRequest
from services.config import (
    AlertsSettings,
    ElasticsearchSettings,
    IndexerSettings,
    KafkaSettings,
    QuerySettings,
)
from services.contract import ENTITIES, encode_event
from services.documents import to_micros
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames
from tests.kafka_helpers import partitions
from tests.waiting import wait_for

SAVED = "/ext/v1/saved-searches"
ATTEMPTS = 3
ALLOWED = "127.0.0.1"
"""ALERTS_WEBHOOK_ALLOWED_HOSTS of the tests: the receiver's address only."""
TS = "2026-01-01T00:00:00Z"


def _id(n: int) -> str:
    return str(uuid.UUID(int=n * 0x10001, version=4))


FLOW, R1, R2 = _id(1), _id(2), _id(3)
A1, A2, A3, A4, A5 = (_id(10 + i) for i in range(5))


# -- a real webhook receiver ---------------------------------------------------------------
@dataclass
class Receiver:
    """POSTs received on 127.0.0.1: `/ok` answers 200, `/fail` 500, `/flaky` 500 twice."""

    posts: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for p, _, body in self.posts if p == path]

    def headers(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for p, h, _ in self.posts if p == path]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with got.lock:
                got.posts.append((self.path, dict(self.headers), body))
            with got.lock:  # `/flaky` fails its first two POSTs, then answers 200
                flaky = sum(1 for p, _, _ in got.posts if p == "/flaky")
            ok = self.path == "/ok" or (self.path == "/flaky" and flaky > 2)
            self.send_response(200 if ok else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- the stack -------------------------------------------------------------------------------
@dataclass
class Stack:
    kafka: KafkaSettings
    es_settings: ElasticsearchSettings
    alerts: AlertsSettings
    indexer: Indexer
    api: httpx.AsyncClient
    admin: AIOKafkaAdminClient
    producer: AIOKafkaProducer


@pytest.fixture
async def stack(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str
) -> AsyncIterator[Stack]:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"{unique_name}.", group_id=unique_name
    )
    es_settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=f"{unique_name}-")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics(
        [NewTopic(kafka.topic_for(e), 3, 1) for e in ENTITIES] + [NewTopic(kafka.dlq_topic, 1, 1)]
    )
    indexer = Indexer(
        kafka,
        es_settings,
        IndexerSettings(
            max_batch=500, publish_changes=True, instance_id="alerts-test", metrics_port=0
        ),
    )
    await indexer.start()
    app = create_api(QuerySettings(webhook_allowed_hosts=ALLOWED), es_settings)
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    alerts = AlertsSettings(
        group_id=f"{unique_name}-alerts",
        webhook_attempts=ATTEMPTS,
        webhook_backoff_initial_s=0.01,
        webhook_backoff_max_s=0.05,
        retry_initial_s=0.05,
        retry_max_s=0.5,
        metrics_port=0,
        claim_timeout_s=600,  # the recent claim below stays live however slow the machine
        webhook_allowed_hosts=ALLOWED,
    )
    try:
        yield Stack(kafka, es_settings, alerts, indexer, api, admin, producer)
    finally:
        await producer.stop()
        await api.aclose()
        await indexer.stop()
        topics = [t for t in await admin.list_topics() if t.startswith(f"{unique_name}.")]
        await admin.delete_topics(topics)
        await admin.close()
        es = AsyncElasticsearch(elasticsearch_url)
        await drop_indices(es, IndexNames(es_settings.index_prefix))
        await es.close()


async def _publish(stack: Stack, entity: str, entity_id: str, version: int, body: Any) -> None:
    value = encode_event(entity, entity_id, "upsert", version, {"id": entity_id, **body})
    await stack.producer.send_and_wait(
        stack.kafka.topic_for(entity), value=value, key=entity_id.encode()
    )


def _artifact(key: str, data: Any, run: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "type": "markdown",
        "data": data,
        "flow_run_id": run,
        "created": TS,
        "updated": TS,
        **extra,
    }


def _run(state: str) -> dict[str, Any]:
    return {
        "name": f"run-{state.lower()}",
        "flow_id": FLOW,
        "state_type": state,
        "created": TS,
        "updated": TS,
    }


async def _read_topic(kafka: KafkaSettings, topic: str) -> list[Any]:
    """Every record of `topic` up to its current end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        for _ in range(200):
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(batch)
        return out
    finally:
        await consumer.stop()


async def _lag(stack: Stack, group: str, topic: str) -> dict[TopicPartition, tuple[Any, int]]:
    """The partitions of `topic` whose end `group` has not committed yet."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka.bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions(consumer, topic)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    committed = await stack.admin.list_consumer_group_offsets(group)
    return {
        tp: (committed.get(tp).offset if committed.get(tp) else None, end)
        for tp, end in ends.items()
        if end and (committed.get(tp) is None or committed[tp].offset < end)
    }


async def _caught_up(stack: Stack, group: str, topic: str, seconds: float = 60) -> None:
    """Wait until `group` has committed the end of every partition of `topic`."""
    lagging = await wait_for(lambda: _lag(stack, group, topic), lambda lag: not lag, seconds)
    assert not lagging, f"{group} lags on {lagging}"


async def _alerts(kafka: KafkaSettings) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await _read_topic(kafka, kafka.alerts_topic)]


async def _alerts_when(stack: Stack, want: int, seconds: float = 60) -> list[dict[str, Any]]:
    return await wait_for(lambda: _alerts(stack.kafka), lambda got: len(got) >= want, seconds)


async def _quiet(stack: Stack) -> None:
    """Everything published so far is indexed, evaluated and delivered."""
    k = stack.kafka
    await _caught_up(stack, k.group_id, k.topic_for("artifact"))
    await _caught_up(stack, f"{k.group_id}.global.alerts-test", k.topic_for("flow_run"))
    await _caught_up(stack, stack.alerts.group_id, k.changes_topic)
    await _caught_up(stack, f"{stack.alerts.group_id}.webhooks", k.alerts_topic)


def _pairs(alerts: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return sorted(
        (a["saved_search"]["name"], a["artifact_id"], a["artifact_version"]) for a in alerts
    )


async def _running(stack: Stack) -> tuple[AlertsService, asyncio.Task[None]]:
    service = AlertsService(stack.kafka, stack.es_settings, stack.alerts)
    await service.start()
    return service, asyncio.create_task(service.serve())


async def _stop(service: AlertsService, task: asyncio.Task[None]) -> None:
    service.stop()
    await asyncio.wait_for(task, 60)
    await service.close()


@pytest.fixture
async def api_only(elasticsearch_url: str, unique_name: str) -> AsyncIterator[httpx.AsyncClient]:
    """The query API over fresh indices, no indexer (the saved-search routes need none)."""
    es_settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=f"{unique_name}-")
    es = AsyncElasticsearch(elasticsearch_url)
    await ensure_indices(es, IndexNames(es_settings.index_prefix))
    app = create_api(QuerySettings(webhook_allowed_hosts=ALLOWED), es_settings)
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")
    try:
        yield api
    finally:
        await api.aclose()
        await drop_indices(es, IndexNames(es_settings.index_prefix))
        await es.close()


async def test_saved_search_crud_and_its_errors(
    api_only: httpx.AsyncClient, elasticsearch_url: str, unique_name: str
) -> None:
    api = api_only
    bad_query = await api.post(SAVED, json={"name": "x", "search": {"q": "revenue AND ("}})
    assert bad_query.status_code == 422 and isinstance(bad_query.json()["detail"], str)
    cursor = await api.post(SAVED, json={"name": "x", "search": {"cursor": "abc"}})
    assert cursor.status_code == 422 and "cursor" in cursor.json()["detail"]
    unknown = await api.post(SAVED, json={"name": "x", "search": {"nope": 1}})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"][:2] == [
        "body",
        "search",
    ]
    for url in ("http://169.254.169.254/latest", "http://localhost:9/x"):
        refused = await api.post(SAVED, json={"name": "x", "search": {}, "webhook": {"url": url}})
        assert refused.status_code == 422
        assert "ALERTS_WEBHOOK_ALLOWED_HOSTS" in refused.json()["detail"]
    assert (await api.get(f"{SAVED}/{uuid.uuid4()}")).status_code == 404
    assert (await api.get(f"{SAVED}/not-a-uuid")).status_code == 404
    assert (await api.delete(f"{SAVED}/{uuid.uuid4()}")).status_code == 404

    created = await api.post(SAVED, json={"name": "one", "search": {"q": "revenue"}})
    assert created.status_code == 201, created.text
    one = created.json()
    assert (await api.get(f"{SAVED}/{one['id']}")).json() == one
    changed = await api.put(
        f"{SAVED}/{one['id']}",
        json={
            "name": "renamed",
            "search": {"q": "revenue", "limit": 5},
            "webhook": {"url": "http://127.0.0.1:9/x"},
        },
    )
    assert changed.status_code == 200
    renamed = changed.json()
    assert renamed["name"] == "renamed" and renamed["created"] == one["created"]
    assert renamed["fingerprint"] == one["fingerprint"]  # limit is presentation
    moved = await api.put(
        f"{SAVED}/{one['id']}",
        json={"name": "x", "search": {"q": "revenue"}, "webhook": {"url": "http://10.0.0.1/"}},
    )
    assert moved.status_code == 422 and "'10.0.0.1' is not allowed" in moved.json()["detail"]
    listed = (await api.get(SAVED)).json()["saved_searches"]
    assert [s["id"] for s in listed] == [one["id"]]
    # deleting a saved search deletes its ledger entries (and no other search's)
    ledger = IndexNames(f"{unique_name}-").alert_ledger
    es = AsyncElasticsearch(elasticsearch_url)
    try:
        for n, owner in enumerate([one["id"], one["id"], "another"]):
            entry = {"search_id": owner, "state": "published", "claimed_us": n, "message": {}}
            await es.index(index=ledger, id=f"alert-{n}", document=entry, refresh=True)
        assert (await api.delete(f"{SAVED}/{one['id']}")).status_code == 204
        await es.indices.refresh(index=ledger)
        left = await es.search(index=ledger, source_includes=["search_id"])
        assert [h["_source"]["search_id"] for h in left["hits"]["hits"]] == ["another"]
    finally:
        await es.close()
    assert (await api.get(SAVED)).json() == {"saved_searches": []}
    schema = (await api.get("/openapi.json")).json()
    assert "SavedSearchIn" in schema["components"]["schemas"]
    assert set(schema["paths"][f"{SAVED}/{{search_id}}"]) == {"get", "put", "delete"}


async def test_alerts_once_per_artifact_version_through_kafka_and_webhooks(
    stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    got, base = receiver
    api = stack.api
    s1 = await api.post(
        SAVED,
        json={
            "name": "S1",
            "webhook": {"url": f"{base}/ok"},
            "search": {
                "q": "revenue",
                "prefect_filter": {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}},
            },
        },
    )
    s2 = await api.post(
        SAVED,
        json={
            "name": "S2",
            "webhook": {"url": f"{base}/fail"},
            "search": {"where": [{"field": "metadata.accuracy", "op": "gte", "value": 0.9}]},
        },
    )
    s3 = await api.post(
        SAVED,
        json={"name": "S3", "webhook": {"url": f"{base}/flaky"}, "search": {"q": "costs"}},
    )
    assert s1.status_code == s2.status_code == s3.status_code == 201
    # a query Elasticsearch refuses, and a webhook host the worker does not allow
    await _store_around_api(stack, SavedSearchIn(name="broken", search=SearchRequest(q="a AND (")))
    port = base.rsplit(":", 1)[1]
    await _store_around_api(
        stack,
        SavedSearchIn.model_validate(
            {
                "name": "S4",
                "search": {"q": "costs"},
                "webhook": {"url": f"http://localhost:{port}/ok"},
            }
        ),
    )
    errors_before = metrics.SEARCH_ERRORS._value.get()
    service, task = await _running(stack)
    try:
        await _publish(stack, "flow", FLOW, 1, {"name": "etl", "created": TS, "updated": TS})
        await _publish(stack, "flow_run", R1, 1, _run("FAILED"))
        await _publish(stack, "flow_run", R2, 1, _run("COMPLETED"))
        await _publish(stack, "artifact", A1, 1, _artifact("sales", "Revenue grew", R1))
        await _publish(stack, "artifact", A2, 1, _artifact("sales", "Revenue fell", R2))
        await _publish(stack, "artifact", A3, 1, _artifact("costs", "Costs only", R1))
        await _publish(
            stack, "artifact", A4, 1, _artifact("model", "ok", R2, metadata_={"accuracy": "0.95"})
        )
        await _publish(
            stack, "artifact", A5, 1, _artifact("model", "low", R1, metadata_={"accuracy": "0.5"})
        )
        first = await _alerts_when(stack, 4)
        # the unparsable one is refused by Elasticsearch at every batch; the others alert
        assert metrics.SEARCH_ERRORS._value.get() > errors_before
        assert _pairs(first) == [("S1", A1, 1), ("S2", A4, 1), ("S3", A3, 1), ("S4", A3, 1)]

        # R2 turns FAILED: A2 now matches S1; A4 (rewritten too) must not alert again
        await _publish(stack, "flow_run", R2, 2, _run("FAILED"))
        # a new version of A1 that still matches: a new alert (once per artifact version)
        await _publish(stack, "artifact", A1, 2, _artifact("sales", "Revenue grew more", R1))
        await _alerts_when(stack, 6)
        await _quiet(stack)
        alerts = await _read_topic(stack.kafka, stack.kafka.alerts_topic)
        want = [
            ("S1", A1, 1),
            ("S1", A1, 2),
            ("S1", A2, 1),
            ("S2", A4, 1),
            ("S3", A3, 1),
            ("S4", A3, 1),
        ]
        assert _pairs([json.loads(r.value) for r in alerts]) == want
        by_id = {json.loads(r.value)["alert_id"]: r for r in alerts}
        assert len(by_id) == 6
        for record in alerts:
            body = json.loads(record.value)
            assert dict(record.headers)["alert_id"] == body["alert_id"].encode()
            assert record.key == body["saved_search"]["id"].encode()
            assert body["artifact"]["id"] == body["artifact_id"]

        # the webhook that answers 200 got S1's three alerts, once each
        ok = got.bodies("/ok")
        assert sorted(b["alert_id"] for b in ok) == sorted(
            json.loads(r.value)["alert_id"]
            for r in alerts
            if json.loads(r.value)["saved_search"]["name"] == "S1"
        )
        assert all(
            h["Idempotency-Key"] == b["alert_id"]
            for h, b in zip(got.headers("/ok"), ok, strict=True)
        )
        # the flaky one got S3's alert on the third attempt (ATTEMPTS = 3): delivered
        flaky = got.bodies("/flaky")
        assert len(flaky) == 3 and {b["artifact_id"] for b in flaky} == {A3}
        assert len({b["alert_id"] for b in flaky}) == 1
        # the one that answers 500 was tried ATTEMPTS times, then dead-lettered
        failing = got.bodies("/fail")
        assert len(failing) == ATTEMPTS and {b["artifact_id"] for b in failing} == {A4}
        # S4's host is not allowed: never called, dead-lettered at once with the reason
        dead = {
            dict(r.headers)["dlq.reason"]: r
            for r in await _read_topic(stack.kafka, stack.kafka.alerts_dlq_topic)
        }
        assert set(dead) == {b"webhook", b"webhook-not-allowed"}
        headers = dict(dead[b"webhook"].headers)
        assert headers["dlq.detail"] == b"HTTP 500"
        assert json.loads(dead[b"webhook"].value)["artifact_id"] == A4
        refused = dict(dead[b"webhook-not-allowed"].headers)
        assert b"'localhost' is not allowed" in refused["dlq.detail"]
        assert refused["dlq.attempts"] == b"0"
        assert json.loads(dead[b"webhook-not-allowed"].value)["saved_search"]["name"] == "S4"
    finally:
        await _stop(service, task)

    # a claim whose claimant died before publishing (long ago), and one a live worker holds
    s1_id = s1.json()["id"]
    orphan, held = await _claims(stack, s1_id)

    # redelivery and replay: rewind the worker's group to the start of the change feed
    await _rewind(stack, stack.alerts.group_id, stack.kafka.changes_topic)
    service, task = await _running(stack)
    try:
        await _quiet(stack)
        # every current match (A1 v2, A2, A4, A3) was seen again, and suppressed by the ledger
        assert service.worker.batches > 0 and service.worker.matched >= 4
        # only the abandoned claim was published (taken over at start-up)
        assert service.worker.recovered == 1 and service.worker.published == 1
        await _caught_up(stack, f"{stack.alerts.group_id}.webhooks", stack.kafka.alerts_topic)
    finally:
        await _stop(service, task)
    again = [json.loads(r.value) for r in await _read_topic(stack.kafka, stack.kafka.alerts_topic)]
    assert _pairs(again) == sorted([*want, ("S1", orphan, 1)])
    assert len(got.bodies("/ok")) == 4 and len(got.bodies("/fail")) == ATTEMPTS
    assert len(got.bodies("/flaky")) == 3
    states = await _ledger_states(stack)
    fingerprint = s1.json()["fingerprint"]
    assert states[alert_id(s1_id, fingerprint, orphan, 1)] == "published"
    assert states[alert_id(s1_id, fingerprint, held, 1)] == "pending"


async def _store_around_api(stack: Stack, body: SavedSearchIn) -> str:
    """Store a saved search the API would refuse (as if an older release had accepted it)."""
    saved = saved_search_doc(str(uuid.uuid4()), body, TS, TS)
    es = AsyncElasticsearch(stack.es_settings.url)
    try:
        await es.index(
            index=IndexNames(stack.es_settings.index_prefix).saved_searches,
            id=saved.id,
            document=index_source(saved, 1),
            refresh=True,
        )
    finally:
        await es.close()
    return saved.id


async def _claims(stack: Stack, search_id: str) -> tuple[str, str]:
    """Write two pending claims of S1 into the ledger: one abandoned, one recent."""
    es = AsyncElasticsearch(stack.es_settings.url)
    names = IndexNames(stack.es_settings.index_prefix)
    search = (await stack.api.get(f"{SAVED}/{search_id}")).json()
    ids = []
    try:
        for n, claimed_us in ((90, 0), (91, to_micros(datetime.now(UTC)))):
            artifact = _id(n)
            message = {
                "alert_id": alert_id(search_id, search["fingerprint"], artifact, 1),
                "saved_search": {
                    "id": search_id,
                    "name": "S1",
                    "fingerprint": search["fingerprint"],
                },
                "artifact_id": artifact,
                "artifact_version": 1,
                "document_version": 1,
                "matched_at": TS,
                "artifact": {"id": artifact, "key": "lost"},
            }
            await es.index(
                index=names.alert_ledger,
                id=message["alert_id"],
                document={
                    "search_id": search_id,
                    "artifact_id": artifact,
                    "artifact_version": 1,
                    "state": "pending",
                    "claimed_us": claimed_us,
                    "message": message,
                },
                refresh=True,
            )
            ids.append(artifact)
    finally:
        await es.close()
    return ids[0], ids[1]


async def _ledger_states(stack: Stack) -> dict[str, str]:
    es = AsyncElasticsearch(stack.es_settings.url)
    try:
        index = IndexNames(stack.es_settings.index_prefix).alert_ledger
        await es.indices.refresh(index=index)
        resp = await es.search(index=index, size=100, source_includes=["state"])
        return {h["_id"]: h["_source"]["state"] for h in resp["hits"]["hits"]}
    finally:
        await es.close()


async def _rewind(stack: Stack, group: str, topic: str) -> None:
    """Commit offset 0 of every partition for `group` (no member is running)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions(consumer, topic)]
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()
    committed = await stack.admin.list_consumer_group_offsets(group)
    assert all(committed[tp].offset == 0 for tp in committed if tp.topic == topic)


async def _replay_repeats_nothing(stack: Stack, want: list[tuple[str, str, int]]) -> None:
    """The worker's group rewound to offset 0 and run again: it sees its matches again (at
    least two) and publishes none of them; the alert topic still holds exactly `want`."""
    await _rewind(stack, stack.alerts.group_id, stack.kafka.changes_topic)
    service, task = await _running(stack)
    try:
        await _quiet(stack)
        assert service.worker.batches > 0 and service.worker.matched >= 2
        assert service.worker.published == 0
    finally:
        await _stop(service, task)
    assert _pairs(await _alerts(stack.kafka)) == want


B1, B2, B3 = (_id(30 + i) for i in range(3))


async def test_latest_per_key_alerts_once_per_latest_artifact_version(stack: Stack) -> None:
    """L: the latest artifact of a key mentions revenue; LF: the latest artifact of a key is
    in a FAILED flow run. Three artifacts of one key, each the latest in turn, then a new
    version of the last, then its run fails; a rewound change feed repeats nothing."""
    api = stack.api
    latest = await api.post(
        SAVED, json={"name": "L", "search": {"latest_per_key": True, "q": "revenue"}}
    )
    failed = await api.post(
        SAVED,
        json={
            "name": "LF",
            "search": {
                "latest_per_key": True,
                "prefect_latest_filter": {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}},
                "fields": ["key", "latest_id"],
            },
        },
    )
    assert latest.status_code == failed.status_code == 201, failed.text
    bad = await api.post(
        SAVED, json={"name": "x", "search": {"latest_per_key": True, "prefect_filter": {}}}
    )
    assert bad.status_code == 422 and "prefect_latest_filter" in bad.json()["detail"]
    service, task = await _running(stack)
    try:
        await _publish(stack, "flow", FLOW, 1, {"name": "etl", "created": TS, "updated": TS})
        await _publish(stack, "flow_run", R2, 1, _run("COMPLETED"))
        when = "2026-01-0{}T00:00:00Z".format
        # B1 is the latest of `report` and matches L
        await _publish(
            stack, "artifact", B1, 1, _artifact("report", "Revenue up", R2, created=when(1))
        )
        await _alerts_when(stack, 1)
        # B2 is now the latest and does not match; B3 then does
        await _publish(
            stack, "artifact", B2, 1, _artifact("report", "costs only", R2, created=when(2))
        )
        await _publish(
            stack, "artifact", B3, 1, _artifact("report", "Revenue again", R2, created=when(3))
        )
        await _alerts_when(stack, 2)
        # a new version of the latest: alerts again; then its run fails: LF alerts once
        await _publish(
            stack, "artifact", B3, 2, _artifact("report", "Revenue more", R2, created=when(3))
        )
        await _alerts_when(stack, 3)
        await _publish(stack, "flow_run", R2, 2, _run("FAILED"))
        await _alerts_when(stack, 4)
        await _quiet(stack)
        got = await _alerts(stack.kafka)
    finally:
        await _stop(service, task)
    want = [("L", B1, 1), ("L", B3, 1), ("L", B3, 2), ("LF", B3, 2)]
    assert _pairs(got) == want
    assert all(a["latest_per_key"] for a in got)
    lf = next(a for a in got if a["saved_search"]["name"] == "LF")
    assert lf["artifact"] == {"key": "report", "latest_id": B3}
    assert all(a["artifact"]["latest_id"] == a["artifact_id"] for a in got)

    await _replay_repeats_nothing(stack, want)


E1, E2, E3 = (_id(40 + i) for i in range(3))


async def _search(api: httpx.AsyncClient, search_id: str) -> dict[str, Any]:
    return dict((await api.get(f"{SAVED}/{search_id}")).json())


async def test_notify_existing_alerts_what_already_matches_once(stack: Stack) -> None:
    """Artifacts indexed before any saved search; N (notify_existing) and L (the same in
    latest_per_key mode) alert them, P (default) does not; later changes alert all three
    once; a rename rescans nothing, a new query rescans under its new fingerprint."""
    api = stack.api
    await _publish(stack, "flow", FLOW, 1, {"name": "etl", "created": TS, "updated": TS})
    await _publish(stack, "flow_run", R1, 1, _run("COMPLETED"))
    await _publish(stack, "artifact", E1, 1, _artifact("old", "Revenue old", R1))
    await _publish(stack, "artifact", E2, 1, _artifact("c", "costs", R1))

    async def indexed() -> Any:
        return (await api.post("/api/artifacts/count", json={})).json()

    assert await wait_for(indexed, lambda n: n == 2, 60) == 2
    # its scan fails in Elasticsearch: logged and counted, the other scans go on
    broken = SavedSearchIn(name="broken", search=SearchRequest(q="a AND ("), notify_existing=True)
    broken_id = await _store_around_api(stack, broken)
    errors_before = metrics.SEARCH_ERRORS._value.get()
    service, task = await _running(stack)
    try:
        # the feed's records of E1 and E2 are consumed before the searches exist: only a
        # scan can alert them (P, without notify_existing, must not)
        await _caught_up(stack, stack.alerts.group_id, stack.kafka.changes_topic)
        n = (
            await api.post(
                SAVED, json={"name": "N", "search": {"q": "revenue"}, "notify_existing": True}
            )
        ).json()
        latest = {"latest_per_key": True, "q": "revenue"}
        lat = (
            await api.post(SAVED, json={"name": "L", "search": latest, "notify_existing": True})
        ).json()
        p = (await api.post(SAVED, json={"name": "P", "search": {"q": "revenue"}})).json()
        assert n["existing_scan"] == lat["existing_scan"] == "pending"
        assert n["notify_existing"] and p["existing_scan"] is None and not p["notify_existing"]
        await _alerts_when(stack, 2)
        for saved in (n, lat):
            done = await wait_for(
                lambda s=saved: _search(api, s["id"]), lambda s: s["existing_scan"] == "done", 90
            )
            assert done["existing_scan"] == "done"

        assert (await _search(api, broken_id))["existing_scan"] == "done"
        assert metrics.SEARCH_ERRORS._value.get() > errors_before
        await _publish(stack, "artifact", E3, 1, _artifact("new", "Revenue new", R1))
        await _alerts_when(stack, 5)
        await _publish(stack, "artifact", E1, 2, _artifact("old", "Revenue old again", R1))
        await _alerts_when(stack, 8)

        described = {
            "name": "N",
            "search": {"q": "revenue"},
            "notify_existing": True,
            "description": "d",
        }
        kept = (await api.put(f"{SAVED}/{n['id']}", json=described)).json()
        assert kept["existing_scan"] == "done" and kept["fingerprint"] == n["fingerprint"]
        widened = {"name": "N", "search": {"q": "revenue OR costs"}, "notify_existing": True}
        changed = (await api.put(f"{SAVED}/{n['id']}", json=widened)).json()
        assert changed["existing_scan"] == "pending"
        assert changed["fingerprint"] != n["fingerprint"]
        await _alerts_when(stack, 11)
        rescanned = await wait_for(
            lambda: _search(api, n["id"]), lambda s: s["existing_scan"] == "done", 90
        )
        assert rescanned["existing_scan"] == "done"
        await _quiet(stack)
        got = await _alerts(stack.kafka)
    finally:
        await _stop(service, task)
    assert _pairs(got) == sorted(
        [
            ("N", E1, 1),
            ("L", E1, 1),
            ("N", E3, 1),
            ("P", E3, 1),
            ("L", E3, 1),
            ("N", E1, 2),
            ("P", E1, 2),
            ("L", E1, 2),
            ("N", E1, 2),  # the new query: what matches it now, once more
            ("N", E2, 1),
            ("N", E3, 1),
        ]
    )
    fingerprints = {
        a["saved_search"]["fingerprint"] for a in got if a["saved_search"]["name"] == "N"
    }
    assert fingerprints == {n["fingerprint"], changed["fingerprint"]}


V1 = _id(50)


async def test_changes_not_searchable_yet_alert_once(stack: Stack) -> None:
    """With the periodic refresh switched off, no change the worker is told about is
    searchable when it first looks: it must make it searchable (one forced refresh), never
    judge what searches still see. F (FAILED runs) is the sharp case: when the run turns
    FAILED, searches still see the artifact's earlier document (a COMPLETED run), which does
    not match. Each alerts exactly once; a rewound change feed repeats nothing."""
    api = stack.api
    for name, search in (
        (
            "F",
            {
                "q": "revenue",
                "prefect_filter": {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}},
            },
        ),
        ("L", {"q": "revenue", "latest_per_key": True}),
    ):
        resp = await api.post(SAVED, json={"name": name, "search": search})
        assert resp.status_code == 201, resp.text
    names = IndexNames(stack.es_settings.index_prefix)
    es = AsyncElasticsearch(stack.es_settings.url)
    try:
        await es.indices.put_settings(
            index=f"{names.artifacts},{names.collections}",
            settings={"index": {"refresh_interval": "-1"}},
        )
    finally:
        await es.close()
    # and the indexer's own refresh after its writes (ADR 0012): only the worker refreshes
    assert stack.indexer.processor is not None
    stack.indexer.processor.written = None
    forced_before = metrics.FORCED_REFRESHES._value.get()
    service, task = await _running(stack)
    try:
        await _publish(stack, "flow", FLOW, 1, {"name": "etl", "created": TS, "updated": TS})
        await _publish(stack, "flow_run", R1, 1, _run("COMPLETED"))
        await _publish(stack, "artifact", V1, 1, _artifact("weekly", "Revenue report", R1))
        await _alerts_when(stack, 1)
        await _publish(stack, "flow_run", R1, 2, _run("FAILED"))
        await _alerts_when(stack, 2)
        await _quiet(stack)
        got = await _alerts(stack.kafka)
    finally:
        await _stop(service, task)
    want = [("F", V1, 1), ("L", V1, 1)]
    assert _pairs(got) == want
    assert metrics.FORCED_REFRESHES._value.get() >= forced_before + 2

    await _replay_repeats_nothing(stack, want)
