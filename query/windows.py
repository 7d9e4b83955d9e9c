"""Relevance cursor pages from a window of ranked hits, remembered between pages.

A cursor page in relevance order makes Elasticsearch score every match again: a
`search_after` on a score cannot skip the documents that score higher than the cursor
(each must be scored to be passed over), and the id tie-breaker keeps Lucene from
skipping by score at all. At 1M artifacts a `revenue` page of 50 took 14 ms of that
ranking and 4 ms of fetching and highlighting its 50 hits (docs/benchmarks/RESULTS.md).

So a relevance cursor page without a window ranks the next `pages` pages — sort values
and ids only, no `_source`, no highlighting: ranking 250 costs what ranking 50 does —
beside its own search (one `_msearch`: two threads, so the page takes as long as
before), and remembers the window's hits after its own under the cursor it hands out.
The next page asked with that cursor is fetched by id — the same query restricted to
those ids — without ranking again (Solr's `queryResultWindowSize` is the same idea).

Why that is exact: every page of a cursor walk searches one point in time, so the ranking
of its matches cannot change between pages; the window holds that ranking's next hits
after the cursor's sort values, and the fetch searches the same query, under the same
point in time, restricted to those ids: the same documents with the same scores, sort
values and highlights. Every answer is checked against the window (the same ids in the
same order) and a page that does not match is searched as without windows. A window is
used once (taken, and what is left put back under the next cursor), bound to the point
in time, the sort values and the request; one that is missing (another API replica,
evicted, never made) means a plain search, as before.

Windows pay where ranking is the cost: at 1M artifacts a walk over 93,796 matches took
half the time with them; over 9,448 matches at 100k, where ranking is cheap, the same walk
took 5-20 % longer on average (every fifth page runs two searches). So the ranking also
counts the matches up to `min_matches`, and a walk with fewer is marked small and
searched without windows from then on.

When a page leaves `ahead` pages or fewer of its window to answer (0: when it uses the
window up), `query.repository` ranks the next window in the background, after the
window's last hit (under the same point in time, so it is the same window), and the
walk's page after the window takes it. Ranked while the walk's last pages of the window
are answered, it is usually there when asked, even for a client that pages without pause.

Pure: no I/O. `query.repository` does the requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

MAX_WINDOW_HITS = 1_000
"""Ranked hits remembered per window at most (fewer pages when pages are large)."""


@dataclass(frozen=True, slots=True)
class Ranked:
    """One hit of a ranking: its document id and sort values."""

    doc_id: str
    sort: list[Any]


@dataclass(frozen=True, slots=True)
class Window:
    """Hits ranked after a cursor, not answered yet, and the total of the search; `more`:
    whether hits may follow the last one (False when the ranking came back short)."""

    hits: list[Ranked]
    total: int | None
    more: bool = True


def window_size(limit: int, pages: int) -> int:
    """Hits to rank for a page of `limit` that may also serve the next pages."""
    if limit <= 0:
        return limit
    return limit * max(1, min(pages, MAX_WINDOW_HITS // limit))


def ranked(hits: Sequence[dict[str, Any]]) -> list[Ranked]:
    """The ranking of a `_search` answer's hits (with `sort` values)."""
    return [Ranked(str(h["_id"]), list(h["sort"])) for h in hits]


def split(window: Window, limit: int) -> tuple[list[Ranked], Window | None]:
    """A page of `limit` hits off the window, and what is left of it (None: nothing)."""
    page, rest = window.hits[:limit], window.hits[limit:]
    return page, (Window(rest, window.total, window.more) if rest else None)


def next_window_after(window: Window, rest: Window | None, limit: int, ahead: int) -> Any:
    """The sort values after which the window that follows `window` is to be ranked now,
    once a page of `limit` was taken off `window` leaving `rest`: its last hit's, when at
    most `ahead` pages are left to answer and hits may follow it; None otherwise."""
    if not window.more or not window.hits:
        return None
    if rest is not None and len(rest.hits) > ahead * limit:
        return None
    return window.hits[-1].sort


def in_order(page: Sequence[Ranked], hits: Sequence[dict[str, Any]]) -> bool:
    """Whether a fetch answered exactly the page's documents, in the page's order."""
    return len(page) == len(hits) and all(
        r.doc_id == str(h.get("_id")) for r, h in zip(page, hits, strict=True)
    )


def worth_a_window(total: dict[str, Any] | None, min_matches: int) -> bool:
    """Whether a ranking's `hits.total` (counted up to `min_matches`) has enough matches
    for windows to pay."""
    if not total:
        return True  # not counted: as before
    return total.get("relation") == "gte" or int(total.get("value", 0)) >= min_matches


class Windows:
    """Windows of ranked hits by cursor, least recently used dropped beyond `capacity`;
    and the walks found too small for windows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._windows: OrderedDict[bytes, Window] = OrderedDict()
        self._small: OrderedDict[bytes, None] = OrderedDict()

    @staticmethod
    def walk(pit_id: str, fingerprint: str) -> bytes:
        """What a walk is: its point in time and its request."""
        return orjson.dumps([pit_id, fingerprint])

    def mark_small(self, walk: bytes) -> None:
        """A walk whose pages are searched without windows."""
        if self.capacity <= 0:
            return
        self._small[walk] = None
        self._small.move_to_end(walk)
        while len(self._small) > self.capacity:
            self._small.popitem(last=False)

    def is_small(self, walk: bytes) -> bool:
        """Whether `walk` was marked small."""
        return walk in self._small

    @staticmethod
    def key(pit_id: str, after: Sequence[Any], fingerprint: str) -> bytes:
        """What a window is bound to: the point in time, the sort values, the request."""
        return orjson.dumps([pit_id, list(after), fingerprint])

    def take(self, key: bytes) -> Window | None:
        """The window remembered under `key`, forgotten here (each is used once)."""
        return self._windows.pop(key, None)

    def put(self, key: bytes, window: Window) -> None:
        """Remember `window` under `key`."""
        if self.capacity <= 0 or not window.hits:
            return
        self._windows[key] = window
        self._windows.move_to_end(key)
        while len(self._windows) > self.capacity:
            self._windows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._windows)

    def __contains__(self, key: bytes) -> bool:
        return key in self._windows
