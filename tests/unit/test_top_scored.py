"""`query.extension.top_scored_body` / `order_top_scored` without servers.

Elasticsearch's top-k by score is modelled here as what it guarantees and no more: the k
best scores, ties at the k-th score broken in any order. Whatever it returns, the page put
in order must be the first `limit` documents in the documented order (score descending,
then id descending), or the function must refuse.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from query.extension import SearchRequest, build_body, order_top_scored, top_scored_body


def _docs(scores: list[float]) -> list[dict[str, Any]]:
    return [{"_id": str(i), "_score": s, "id_hi": i % 3, "id_lo": i} for i, s in enumerate(scores)]


def _es_top_k(docs: list[dict[str, Any]], k: int, rng: random.Random) -> dict[str, Any]:
    shuffled = list(docs)
    rng.shuffle(shuffled)  # ties go by internal position: any order
    best = sorted(shuffled, key=lambda d: d["_score"], reverse=True)[:k]
    rng.shuffle(best)  # and the hits' order among equal scores is not ours to rely on
    best.sort(key=lambda d: d["_score"], reverse=True)
    hits = [
        {
            "_id": d["_id"],
            "_score": d["_score"],
            "fields": {"id_hi": [d["id_hi"]], "id_lo": [d["id_lo"]]},
        }
        for d in best
    ]
    return {"took": 1, "hits": {"hits": hits}}


@settings(max_examples=500, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.5, 1.0, 1.25, 2.0, 3.5]), max_size=30),
    limit=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_page_put_in_order_is_the_full_orders_or_refused(
    scores: list[float], limit: int, seed: int
) -> None:
    docs = _docs(scores)
    full = sorted(docs, key=lambda d: (d["_score"], d["id_hi"], d["id_lo"]), reverse=True)
    answer = _es_top_k(docs, limit + 1, random.Random(seed))
    page = order_top_scored(answer, limit)
    if page is None:
        # refused only when a score straddles the page's end
        assert len(full) > limit and full[limit]["_score"] == full[limit - 1]["_score"]
        return
    hits = page["hits"]["hits"]
    assert [h["_id"] for h in hits] == [d["_id"] for d in full[:limit]]
    assert [h["sort"] for h in hits] == [
        [d["_score"], d["id_hi"], d["id_lo"]] for d in full[:limit]
    ]
    assert all("fields" not in h for h in hits) and page["took"] == 1


def test_hits_without_their_ids_sort_values_are_refused() -> None:
    answer = {"hits": {"hits": [{"_id": "a", "_score": 1.0, "fields": {"id_hi": [1]}}]}}
    assert order_top_scored(answer, 5) is None


def test_only_a_first_relevance_page_without_totals_is_asked_by_score() -> None:
    def top(**fields: Any) -> dict[str, Any] | None:
        req = SearchRequest.model_validate({"q": "revenue", "limit": 10, **fields})
        return top_scored_body(req, build_body(req, first_page=req.cursor is None))

    body = top(facets=["type"])
    assert body is not None
    assert "sort" not in body and "aggs" not in body and body["size"] == 11
    assert body["docvalue_fields"] == ["id_hi", "id_lo"] and body["track_total_hits"] is False
    assert top(sort=[{"field": "relevance", "order": "desc"}]) is not None
    assert top(track_total=True) is None
    assert top(limit=0) is None
    assert top(sort=[{"field": "relevance", "order": "asc"}]) is None
    assert top(sort=[{"field": "relevance"}, {"field": "created"}]) is None
    assert top(sort=[{"field": "created"}]) is None
    no_words = SearchRequest.model_validate({"limit": 10})
    assert top_scored_body(no_words, build_body(no_words, first_page=True)) is None
