"""`artifact-search alerts` as a process: it creates its topics and indices, becomes ready on
its metrics port, serves metrics, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from services.config import KafkaSettings
from services.es.admin import drop_indices
from services.es.indices import IndexNames
from tests.serving import free_port

REPO = Path(__file__).resolve().parents[2]


async def test_alerts_command_starts_ready_and_stops_on_sigterm(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str
) -> None:
    port = free_port()
    prefix = f"{unique_name}."
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "ELASTICSEARCH_", "ALERTS_", "LOG_"))
    }
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_TOPIC_PREFIX=prefix,
        ELASTICSEARCH_URL=elasticsearch_url,
        ELASTICSEARCH_INDEX_PREFIX=f"{unique_name}-",
        ALERTS_GROUP_ID=unique_name,
        ALERTS_METRICS_PORT=str(port),
        LOG_LEVEL="WARNING",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "artifact_search.cli",
        "alerts",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    es = AsyncElasticsearch(elasticsearch_url)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        ready = False
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while not ready and time.monotonic() < deadline and proc.returncode is None:
                with contextlib.suppress(httpx.HTTPError):
                    ready = (await client.get("/readyz")).status_code == 200
                if not ready:
                    await asyncio.sleep(0.3)
            assert ready, "the alerts worker never became ready"
            metrics = (await client.get("/metrics")).text
            assert "alerts_published_total" in metrics
        kafka = KafkaSettings(topic_prefix=prefix)
        topics = set(await admin.list_topics())
        assert {kafka.changes_topic, kafka.alerts_topic, kafka.alerts_dlq_topic} <= topics
        names = IndexNames(f"{unique_name}-")
        assert await es.indices.exists_alias(name=names.saved_searches)
        assert await es.indices.exists_alias(name=names.alert_ledger)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
        await admin.close()
        await drop_indices(es, IndexNames(f"{unique_name}-"))
        await es.close()
