"""PURE: which reconcile passes of the API mode list everything, and how far back the
others list (docs/adr/0009-prefect-api-sync.md).

A **full** pass lists every entity of a collection and then reads the ids published as
live that the listing lacked: the only way to find deletions that emitted no event. It
costs one request per page of 200, so a million artifacts take 5,000 requests (over four
minutes at 20 requests/s). An **incremental** pass lists a collection newest `updated`
first and stops at the first page that reaches back past the collection's high-water
mark (the newest `updated` an earlier pass listed) minus an overlap: it finds changes
that emitted no event (a flow run's tags edited, a deployment paused) for the price of
the pages that changed, but no deletions.

Prefect offers the order by `updated` for flows, deployments and artifacts only; flow
runs and task runs have no such order and no filter on `updated`, so every pass lists
them fully. A session's first pass is full (it follows a restart, when deletions may
have happened unseen), and so is every `full_every`-th one after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from services.prefect.tables import TABLES
from services.sync.api_plan import LISTING_SORT

INCREMENTAL: Final = frozenset(e for e, order in LISTING_SORT.items() if order == "UPDATED_DESC")
"""The collections a pass can list newest `updated` first (and so stop early)."""


@dataclass(frozen=True)
class Listing:
    """How one pass lists one collection: everything (and then checks for deletions), or
    newest first down to `since`."""

    entity: str
    since: datetime | None = None

    @property
    def full(self) -> bool:
        """Whether the listing is complete (and absent ids are candidates for a delete)."""
        return self.since is None


@dataclass(frozen=True)
class PassPlan:
    """The listings of one reconcile pass, in the order of `TABLES`."""

    listings: tuple[Listing, ...]

    @property
    def full(self) -> bool:
        """Whether every collection is listed completely."""
        return all(listing.full for listing in self.listings)


def plan_pass(
    number: int,
    full_every: int,
    high_water: Mapping[str, datetime],
    overlap: timedelta,
) -> PassPlan:
    """The plan of a session's pass `number` (0: the first): full when `number` is a
    multiple of `full_every` (so the first always is); otherwise each collection that
    has an order by `updated` and a high-water mark is listed from `mark - overlap`."""
    if full_every < 1:
        raise ValueError("full_every must be at least 1")
    if overlap < timedelta(0):
        raise ValueError("overlap must not be negative")
    full = number % full_every == 0
    listings = []
    for entity in TABLES:
        mark = high_water.get(entity)
        if full or entity not in INCREMENTAL or mark is None:
            listings.append(Listing(entity))
        else:
            listings.append(Listing(entity, mark - overlap))
    return PassPlan(tuple(listings))


def reached_back(listing: Listing, page_updated: Iterable[datetime], page_full: bool) -> bool:
    """Whether the listing ends after this page: a short page ends any listing; an
    incremental listing also ends at a page holding an entity not newer than `since`
    (the listing is ordered newest `updated` first, so every later page is older)."""
    if not page_full:
        return True
    if listing.since is None:
        return False
    since = listing.since
    return any(updated <= since for updated in page_updated)


def high_water_after(previous: datetime | None, listed: Iterable[datetime]) -> datetime | None:
    """The collection's high-water mark after a pass listed entities with these
    `updated`: the newest of them and the previous mark (it never moves back)."""
    newest = max(listed, default=None)
    if newest is None:
        return previous
    if previous is None or newest > previous:
        return newest
    return previous


__all__ = ["INCREMENTAL", "Listing", "PassPlan", "high_water_after", "plan_pass", "reached_back"]
