"""Every metric that the Grafana dashboard and the alerting rules query is one the services
export: the four long-running commands (api, indexer, alerts, sync-prefect) run as processes
on the real Kafka and Elasticsearch, their /metrics are scraped, and each name that a PromQL
expression of deploy/grafana/artifact-search.json or of the PrometheusRule names must be
there, with the suffix its type gives it (`_total` of a counter, `_bucket`/`_sum`/`_count` of
a histogram). A renamed metric fails here instead of leaving an empty panel or a silent alert.

sync-prefect is pointed at a closed port: it keeps reconnecting, and serves its metrics
meanwhile (every family is registered at import, so a family without samples still has its
# TYPE line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.cleanup import drop_test_names
from tests.serving import free_port
from tests.waiting import start_cli, terminate

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "artifact-search.json"
RULES = REPO / "deploy" / "k8s" / "components" / "servicemonitor" / "prometheusrule.yaml"
ENV_PREFIXES = ("KAFKA_", "ELASTICSEARCH_", "INDEXER_", "QUERY_", "ALERTS_", "SYNC_", "LOG_")

# PromQL words that look like names but are not metrics
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NAME = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's `label_values(metric, label)`) reads."""
    if m := re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,.*\)\s*", expr):
        return {m[1]}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, regexes
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = LABEL_LISTS.sub("", text)  # by (...), on (...), ...
    names = set()
    for m in NAME.finditer(text):
        if m[0] in KEYWORDS or text[m.end() :].lstrip().startswith("("):
            continue  # a keyword or a function
        names.add(m[0])
    return names


def dashboard_expressions() -> list[str]:
    """The queries of every panel (rows included) and of the templating variables."""
    dash = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rule_expressions() -> list[str]:
    rule = yaml.safe_load(RULES.read_text())
    assert rule["kind"] == "PrometheusRule"
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def exported_names(exposition: str) -> set[str]:
    """The series names a Prometheus scrape of this text can hold, by each family's type."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "summary":
            names |= {f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def test_the_name_extraction() -> None:
    """The extractor itself: names found, functions, labels, strings and durations left out."""
    expr = (
        "histogram_quantile(0.95, sum by (le, endpoint) (rate(query_request_seconds_bucket"
        '{namespace=~"$namespace", status=~"5.."}[5m]))) / on (x) group_left (y) '
        "max without (pod) (indexer_consumer_lag offset 1h) > 5e3 and bool up"
    )
    assert metric_names(expr) == {"query_request_seconds_bucket", "indexer_consumer_lag", "up"}
    assert metric_names("label_values(query_requests_total, namespace)") == {"query_requests_total"}
    assert exported_names(
        "# HELP a_total x\n# TYPE a_total counter\n"
        "# HELP h x\n# TYPE h histogram\n# HELP g x\n# TYPE g gauge\ng 1.0\n"
    ) == {"a_total", "h_bucket", "h_sum", "h_count", "g"}


def test_dashboard_and_rules_query_something() -> None:
    dash, rules = dashboard_expressions(), rule_expressions()
    assert len(dash) >= 25 and len(rules) == 4
    for expr in dash + rules:
        assert metric_names(expr), f"no metric found in {expr!r}"


# --- the real processes ----------------------------------------------------------------------


async def _scrape_when_ready(
    proc: asyncio.subprocess.Process,
    log: Path,
    ready_url: str,
    metrics_url: str,
    seconds: float = 120,
) -> str:
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.returncode is None:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(ready_url)).status_code == 200:
                    metrics = await http.get(metrics_url)
                    assert metrics.status_code == 200, metrics.text
                    return metrics.text
            await asyncio.sleep(0.3)
    output = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
    pytest.fail(f"{ready_url} never answered 200 (exit {proc.returncode}): {output}")


@pytest.fixture
async def scrapes(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """The /metrics text of api, indexer, alerts and sync-prefect, each started here."""
    prefix = f"{unique_name}."
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    ports = {name: free_port() for name in ("api", "indexer", "alerts", "sync")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_TOPIC_PREFIX=prefix,
        KAFKA_GROUP_ID=unique_name,
        ELASTICSEARCH_URL=elasticsearch_url,
        ELASTICSEARCH_INDEX_PREFIX=f"{unique_name}-",
        QUERY_PORT=str(ports["api"]),
        INDEXER_METRICS_HOST="127.0.0.1",
        INDEXER_METRICS_PORT=str(ports["indexer"]),
        INDEXER_STATE_DIR=str(tmp_path / "indexer-state"),
        ALERTS_GROUP_ID=f"{unique_name}-alerts",
        ALERTS_METRICS_HOST="127.0.0.1",
        ALERTS_METRICS_PORT=str(ports["alerts"]),
        SYNC_METRICS_HOST="127.0.0.1",
        SYNC_METRICS_PORT=str(ports["sync"]),
        # a closed port: the bridge retries the connection and never touches a database
        SYNC_POSTGRES_DSN="postgresql://nobody@127.0.0.1:1/none",
        SYNC_STATE_FILE=str(tmp_path / "sync.state.json"),
        LOG_LEVEL="WARNING",
    )
    procs: list[asyncio.subprocess.Process] = []
    try:
        boot = await start_cli(env, tmp_path / "bootstrap.log", "bootstrap")
        await asyncio.wait_for(boot.wait(), 120)
        assert boot.returncode == 0, (tmp_path / "bootstrap.log").read_text()[-2000:]
        names = ("api", "indexer", "alerts", "sync")
        logs = {name: tmp_path / f"{name}.log" for name in names}
        commands = {"api": "api", "indexer": "indexer", "alerts": "alerts", "sync": "sync-prefect"}
        procs = [await start_cli(env, logs[name], commands[name]) for name in names]
        base = "http://127.0.0.1:{}".format
        # the API's probes are under /api; the sync bridge is never ready (no database):
        # alive is enough to read its metrics
        probes = {"api": "/api/ready", "indexer": "/readyz", "alerts": "/readyz", "sync": "/livez"}
        texts = await asyncio.gather(
            *(
                _scrape_when_ready(
                    proc,
                    logs[name],
                    base(ports[name]) + probes[name],
                    base(ports[name]) + "/metrics",
                )
                for name, proc in zip(names, procs, strict=True)
            )
        )
        yield dict(zip(names, texts, strict=True))
    finally:
        await terminate(procs)
        await drop_test_names(kafka_bootstrap, elasticsearch_url, unique_name)


async def test_every_queried_metric_is_exported(scrapes: dict[str, str]) -> None:
    exported = {service: exported_names(text) for service, text in scrapes.items()}
    everything = set().union(*exported.values())
    queried = {
        name for expr in dashboard_expressions() + rule_expressions() for name in metric_names(expr)
    }
    missing = sorted(queried - everything)
    assert not missing, f"queried but exported by no service: {missing}"
    for service, names in exported.items():  # the dashboard covers each of the four
        assert queried & names, f"nothing of {service}'s metrics is queried"
