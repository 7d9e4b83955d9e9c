"""Plan how to fetch Prefect's ``offset``/``limit`` window from Elasticsearch.

``from``/``size`` is only allowed while ``from + size`` stays within the index's
``max_result_window`` (10 000 by default). Deeper windows are walked with
``search_after`` under a point in time: the adapter reads hits page by page,
throws away the first ``skip`` of them, and keeps the next ``take``. The plan is
plain data so the decision is testable without a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_MAX_RESULT_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class EmptyPlan:
    """``limit`` is 0: the answer is an empty list, no search is needed."""


@dataclass(frozen=True, slots=True)
class FromSizePlan:
    """One search with ``from`` and ``size``."""

    from_: int
    size: int


@dataclass(frozen=True, slots=True)
class SearchAfterPlan:
    """A ``search_after`` walk under a point in time.

    Read pages of at most ``page_size`` hits in sort order (each page resumes
    after the previous page's last sort values), discard the first ``skip`` hits
    overall (the skipping pages need no ``_source``), then return the next
    ``take`` hits. The sort must be total, which ``query.sort`` guarantees.
    """

    skip: int
    take: int
    page_size: int

    def page_sizes(self) -> Iterator[int]:
        """The ``size`` of each request of the walk, assuming enough hits exist.

        The last page is trimmed so no request fetches hits past the window. Lazy:
        an offset far past the end (Prefect accepts any 64-bit offset) costs
        nothing until the walk actually reads that far, and it stops at the end.
        """
        remaining = self.skip + self.take
        while remaining > 0:
            size = min(self.page_size, remaining)
            yield size
            remaining -= size


PagingPlan = EmptyPlan | FromSizePlan | SearchAfterPlan
"""What ``plan_paging`` may return."""


def plan_paging(
    offset: int,
    limit: int,
    max_result_window: int = DEFAULT_MAX_RESULT_WINDOW,
) -> PagingPlan:
    """Choose ``from``/``size`` when the window fits, else a ``search_after`` walk."""
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    if max_result_window < 1:
        raise ValueError("max_result_window must be positive")
    if limit == 0:
        return EmptyPlan()
    if offset + limit <= max_result_window:
        return FromSizePlan(from_=offset, size=limit)
    return SearchAfterPlan(skip=offset, take=limit, page_size=max_result_window)
