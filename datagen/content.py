"""Realistic artifact content for the demo and benchmark datasets.

What Prefect flows put in artifacts: markdown reports with headings, figures and bullet
points; tables (Prefect stores `create_table_artifact`'s rows JSON-encoded) with text,
numeric and boolean columns; links and images (`[text](url)` and a URL); progress
percentages; and `metadata_` whose values are strings (Prefect's schema) that read as
numbers, dates and names. The search extension (docs/search.md) is exercised and
measured on this: words, phrases, typed comparisons (`metadata.accuracy >= 0.9`,
`data.revenue > 5000`), facets.

The generator's own edge-case content (unicode, wildcards, odd JSON) stays on the other
artifacts: `realistic_content` rewrites a share of them, with its own random stream, so
every other field of a seeded dataset is unchanged.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any, Final

REGIONS: Final = ("emea", "apac", "amer", "latam")
PRODUCTS: Final = ("widgets", "gadgets", "sprockets", "gizmos", "doohickeys")
MODELS: Final = ("xgboost", "resnet50", "bert-base", "prophet", "lightgbm")
TEAMS: Final = ("ml team", "data platform", "finance", "growth", "ops")
SOURCES: Final = ("s3", "gcs", "snowflake", "postgres", "bigquery")
DASHBOARDS: Final = ("revenue", "latency", "pipeline health", "model drift", "inventory")
_VERBS: Final = ("grew", "fell", "held steady", "recovered", "spiked")
_NOTES: Final = (
    "No anomalies detected.",
    "Two late partitions were backfilled.",
    "Draft: numbers not yet reconciled.",
    "Validation passed on every split.",
    "Schema drift in one upstream table.",
)


def _money(rng: random.Random) -> float:
    return round(rng.uniform(100, 20_000), 2)


def _report(rng: random.Random) -> str:
    region, product = rng.choice(REGIONS), rng.choice(PRODUCTS)
    change = round(rng.uniform(-15, 25), 1)
    lines = [
        f"# {product.capitalize()} report, {region.upper()}",
        "",
        f"Revenue in {region.upper()} {rng.choice(_VERBS)} {abs(change)}% week over week "
        f"to ${_money(rng):,.2f}; {product} shipped {rng.randrange(50, 5_000)} units.",
        "",
        f"- churn: {round(rng.uniform(0.5, 6), 2)}%",
        f"- late orders: {rng.randrange(0, 40)}",
        f"- {rng.choice(_NOTES)}",
    ]
    return "\n".join(lines)


def _metrics_report(rng: random.Random) -> str:
    model = rng.choice(MODELS)
    accuracy, recall = round(rng.uniform(0.7, 0.99), 3), round(rng.uniform(0.6, 0.98), 3)
    return (
        f"## Model evaluation: {model}\n\n"
        f"Accuracy **{accuracy}**, recall {recall}"
        f", trained on {rng.randrange(10_000, 2_000_000)} rows from {rng.choice(SOURCES)}.\n\n"
        f"{rng.choice(_NOTES)}"
    )


def _table(rng: random.Random) -> str:
    rows = [
        {
            "region": rng.choice(REGIONS),
            "product": rng.choice(PRODUCTS),
            "revenue": _money(rng),
            "units": rng.randrange(1, 5_000),
            "on_target": rng.random() < 0.6,
        }
        for _ in range(rng.randrange(2, 9))
    ]
    return json.dumps(rows)


def _link(rng: random.Random) -> str:
    board = rng.choice(DASHBOARDS)
    return f"[{board.capitalize()} dashboard](https://grafana.example/d/{rng.randrange(16**6):06x})"


def _metadata(rng: random.Random) -> dict[str, str]:
    meta = {
        "owner": rng.choice(TEAMS),
        "region": rng.choice(REGIONS),
        "run_at": f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
    }
    if rng.random() < 0.6:
        meta["accuracy"] = str(round(rng.uniform(0.7, 0.99), 3))
    if rng.random() < 0.5:
        meta["rows"] = str(rng.randrange(1_000, 5_000_000))
    if rng.random() < 0.3:
        meta["source"] = rng.choice(SOURCES)
    return meta


def content_for(rng: random.Random, kind: str | None) -> dict[str, Any]:
    """`description`, `data` and `metadata_` of one artifact of type `kind`."""
    if kind == "table":
        data: Any = _table(rng)
        description = f"Sales by region and product, week {rng.randrange(1, 53)}"
    elif kind == "progress":
        data = round(rng.uniform(0, 100), 1)
        description = f"Backfill of {rng.choice(SOURCES)} partitions"
    elif kind == "link":
        data = _link(rng)
        description = "Where to look when this run fails"
    elif kind == "image":
        data = f"https://charts.example/{rng.choice(DASHBOARDS).replace(' ', '-')}.png"
        description = "Chart of the last 30 days"
    elif rng.random() < 0.5:
        data = _report(rng)
        description = "Weekly business report"
    else:
        data = _metrics_report(rng)
        description = "Validation metrics of the nightly training run"
    return {
        "description": description if rng.random() < 0.8 else None,
        "data": data,
        "metadata_": _metadata(rng) if rng.random() < 0.7 else None,
    }


def realistic_content(
    rng: random.Random, artifacts: Sequence[dict[str, Any]], share: float
) -> None:
    """Give about `share` of `artifacts` realistic content for their type, in place."""
    for artifact in artifacts:
        if rng.random() < share:
            artifact.update(content_for(rng, artifact.get("type")))
