"""Windows of ranked hits for relevance cursor pages (query/windows.py), without servers."""

from __future__ import annotations

from query.windows import (
    MAX_WINDOW_HITS,
    Ranked,
    Window,
    Windows,
    in_order,
    next_window_after,
    ranked,
    split,
    window_size,
    worth_a_window,
)


def _hits(n: int, start: int = 0) -> list[Ranked]:
    return [Ranked(f"d{i}", [10.0 - i, f"d{i}", i]) for i in range(start, start + n)]


def test_a_window_ranks_whole_pages_within_its_bound() -> None:
    assert window_size(50, 5) == 250
    assert window_size(20, 1) == 20  # windows off: one page
    assert window_size(200, 10) == MAX_WINDOW_HITS  # 5 pages of 200, not 10
    assert window_size(MAX_WINDOW_HITS * 2, 5) == MAX_WINDOW_HITS * 2  # always one page
    assert window_size(0, 5) == 0


def test_pages_come_off_a_window_in_order_until_it_is_empty() -> None:
    window: Window | None = Window(_hits(5), total=42)
    pages = []
    while window is not None:
        page, window = split(window, 2)
        pages.append([r.doc_id for r in page])
        assert window is None or window.total == 42
    assert pages == [["d0", "d1"], ["d2", "d3"], ["d4"]]


def test_a_fetch_must_answer_the_pages_documents_in_order() -> None:
    page = _hits(3)
    answer = [{"_id": "d0"}, {"_id": "d1"}, {"_id": "d2"}]
    assert in_order(page, answer)
    assert not in_order(page, answer[::-1])
    assert not in_order(page, answer[:2])  # one changed or gone: searched again
    assert ranked([{"_id": "x", "sort": [1.5, "x", 7]}]) == [Ranked("x", [1.5, "x", 7])]


def test_a_window_is_used_once_and_bound_to_its_cursor() -> None:
    windows = Windows(capacity=2)
    key = Windows.key("pit", [1.5, "d1", 3], "request")
    windows.put(key, Window(_hits(2), None))
    assert windows.take(Windows.key("pit", [1.5, "d1", 4], "request")) is None
    assert windows.take(Windows.key("other", [1.5, "d1", 3], "request")) is None
    assert windows.take(Windows.key("pit", [1.5, "d1", 3], "another")) is None
    taken = windows.take(key)
    assert taken is not None and [r.doc_id for r in taken.hits] == ["d0", "d1"]
    assert windows.take(key) is None  # once


def test_the_least_recently_stored_windows_go_first() -> None:
    windows = Windows(capacity=2)
    for name in ("a", "b", "c"):
        windows.put(name.encode(), Window(_hits(1), None))
    assert len(windows) == 2
    assert windows.take(b"a") is None
    assert windows.take(b"b") is not None and windows.take(b"c") is not None
    off = Windows(capacity=0)
    off.put(b"a", Window(_hits(1), None))
    assert len(off) == 0
    windows.put(b"empty", Window([], None))  # nothing to remember
    assert windows.take(b"empty") is None


def test_windows_are_worth_it_from_a_number_of_matches() -> None:
    assert worth_a_window({"value": 20_000, "relation": "gte"}, 20_000)
    assert worth_a_window({"value": 20_000, "relation": "eq"}, 20_000)
    assert not worth_a_window({"value": 19_999, "relation": "eq"}, 20_000)
    assert worth_a_window(None, 20_000)  # not counted: as before


def test_small_walks_are_remembered_within_the_capacity() -> None:
    windows = Windows(capacity=2)
    walks = [Windows.walk(f"pit{i}", "request") for i in range(3)]
    for walk in walks:
        windows.mark_small(walk)
    assert not windows.is_small(walks[0])  # the least recently marked went first
    assert windows.is_small(walks[1]) and windows.is_small(walks[2])
    assert not windows.is_small(Windows.walk("pit1", "another request"))


def test_the_next_window_is_ranked_from_the_page_that_leaves_few_pages_of_this_one() -> None:
    whole = Window(_hits(10), None)  # 5 pages of 2
    end = whole.hits[-1].sort
    window: Window | None = whole
    taken = []
    while window is not None:
        _, rest = split(window, 2)
        taken.append(next_window_after(window, rest, 2, ahead=2))
        window = rest
    # pages leave 4, 3, 2, 1, 0 pages: from the third page on, ranked after the last hit
    assert taken == [None, None, end, end, end]
    last = Window(_hits(2), None)
    assert next_window_after(last, None, 2, ahead=0) == last.hits[-1].sort  # used up
    two = Window(_hits(4), None)
    assert next_window_after(two, split(two, 2)[1], 2, ahead=0) is None  # a page is left


def test_no_window_is_ranked_after_a_ranking_that_came_back_short() -> None:
    short = Window(_hits(3), None, more=False)
    _, rest = split(short, 2)
    assert rest is not None and not rest.more  # what is left keeps it
    assert next_window_after(short, rest, 2, ahead=5) is None
    assert next_window_after(rest, None, 2, ahead=0) is None
    assert next_window_after(Window([], None), None, 2, ahead=5) is None
