"""datagen/content.py: realistic artifact content, searchable the way docs/search.md says."""

from __future__ import annotations

import json
import random
from collections import Counter

from datagen.content import REGIONS, content_for, realistic_content
from datagen.dataset import DatasetScale, generate_dataset
from services.search_text import SEP, search_text, typed_values


def test_tables_are_json_encoded_rows_with_text_number_and_boolean_columns() -> None:
    rng = random.Random(1)
    tables = [content_for(rng, "table")["data"] for _ in range(50)]
    for data in tables:
        rows = json.loads(data)  # Prefect stores a table artifact's rows JSON-encoded
        assert rows and all(r["region"] in REGIONS for r in rows)
        assert all(isinstance(r["revenue"], float) and isinstance(r["units"], int) for r in rows)
        assert all(isinstance(r["on_target"], bool) for r in rows)
    doc = {"type": "table", "data": tables[0], "metadata_": None}
    values = typed_values(doc)
    assert any(v.startswith(f"data.revenue{SEP}") for v in values["n"])
    assert any(v.startswith(f"data.region{SEP}") for v in values["s"])


def test_metadata_values_are_strings_that_read_as_numbers_and_dates() -> None:
    rng = random.Random(2)
    metas = [content_for(rng, "markdown")["metadata_"] for _ in range(200)]
    metas = [m for m in metas if m]
    assert len(metas) > 100
    assert all(isinstance(v, str) for m in metas for v in m.values())  # Prefect's schema
    with_accuracy = next(m for m in metas if "accuracy" in m)
    values = typed_values({"type": "markdown", "data": "x", "metadata_": with_accuracy})
    assert any(v.startswith(f"metadata.accuracy{SEP}") for v in values["n"])
    assert any(v.startswith(f"metadata.run_at{SEP}") for v in values["d"])


def test_reports_links_and_progress_read_as_text() -> None:
    rng = random.Random(3)
    kinds = ["markdown", "link", "progress", "image", None]
    texts = [search_text({"type": k, **content_for(rng, k)}) for k in kinds * 20]
    words = " ".join(t.get("data", "") for t in texts).lower()
    for expected in ("revenue", "week over week", "grafana.example", "dashboard", "accuracy"):
        assert expected in words, expected
    progress = content_for(rng, "progress")["data"]
    assert isinstance(progress, float) and 0 <= progress <= 100


def test_a_share_is_rewritten_and_nothing_else_changes() -> None:
    rng = random.Random(4)
    artifacts = [{"id": str(i), "type": "table", "key": f"k{i}", "data": None} for i in range(1000)]
    before = [dict(a) for a in artifacts]
    realistic_content(rng, artifacts, share=0.6)
    changed = [a for a, b in zip(artifacts, before, strict=True) if a != b]
    assert 520 < len(changed) < 680
    for after, was in zip(artifacts, before, strict=True):
        assert {k: after[k] for k in ("id", "type", "key")} == {
            k: was[k] for k in ("id", "type", "key")
        }


def test_generated_datasets_carry_realistic_content_and_stay_seeded() -> None:
    one = generate_dataset(5, DatasetScale.for_artifacts(2_000))
    two = generate_dataset(5, DatasetScale.for_artifacts(2_000))
    assert one.artifacts == two.artifacts
    types = Counter(
        a["type"] for a in one.artifacts if isinstance(a["data"], str) and "[" in a["data"]
    )
    assert types["link"] > 0
    reports = [
        a for a in one.artifacts if isinstance(a["data"], str) and "week over week" in a["data"]
    ]
    assert len(reports) > 50
