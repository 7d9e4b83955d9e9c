"""PURE: the date histogram of the `created` facet (docs/search.md, "The rest of the request").

Widths: `hour`, `day`, `week` (from Monday) and the calendar's `month` and `year`, all in
UTC. The index has no date-typed field: `created` is stored only, and times are searched
as `created_us`, a long of microseconds (services/es/indices.py), which Elasticsearch's
`date_histogram` would read as milliseconds. Fixed widths are therefore a numeric
`histogram` on `created_us`; months and years, whose lengths vary, are days (a day
`histogram`, whose boundaries are also month and year boundaries in UTC) added up here
into calendar buckets. Bucket values are the start of each bucket, as before.

A histogram has at most `MAX_BUCKETS` buckets: a closed `created` range that would span
more is refused before searching, and an answer with more non-empty buckets is refused
after (an open range over years of hourly data).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from services.documents import format_micros, to_micros
from services.errors import TranslationError

Width = Literal["hour", "day", "week", "month", "year"]
MAX_BUCKETS = 2_000
DAY_US = 86_400_000_000
FIXED_US: dict[str, int] = {"hour": 3_600_000_000, "day": DAY_US, "week": 7 * DAY_US}
MONDAY_US = 4 * DAY_US  # 1970-01-05, a Monday: weeks start on Mondays
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def histogram_agg(width: Width) -> dict[str, Any]:
    """The aggregation: the width's own buckets, or days for months and years."""
    return {
        "histogram": {
            "field": "created_us",
            "interval": FIXED_US.get(width, DAY_US),
            "offset": MONDAY_US if width == "week" else 0,
            "min_doc_count": 1,
        }
    }


def _calendar_start(micros: int, width: Width) -> int:
    moment = _EPOCH + timedelta(microseconds=micros)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if width == "year":
        start = start.replace(month=1)
    return to_micros(start)


def _bucket_start(micros: int, width: Width) -> int:
    if width in FIXED_US:
        offset = MONDAY_US if width == "week" else 0
        return (micros - offset) // FIXED_US[width] * FIXED_US[width] + offset
    return _calendar_start(micros, width)


def _months(micros: int) -> int:
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.year * 12 + moment.month - 1


def count_buckets(after: datetime, before: datetime, width: Width) -> int:
    """How many buckets of `width` the interval [after, before) touches."""
    first, last = to_micros(after), to_micros(before) - 1
    if last < first:
        return 0
    if width in FIXED_US:
        return (_bucket_start(last, width) - _bucket_start(first, width)) // FIXED_US[width] + 1
    months = _months(last) - _months(first)
    if width == "month":
        return months + 1
    return (
        (_EPOCH + timedelta(microseconds=last)).year
        - (_EPOCH + timedelta(microseconds=first)).year
        + 1
    )


def _too_many(count: int, width: Width) -> TranslationError:
    return TranslationError(
        f"The created histogram would have {count:,} {width} buckets (at most "
        f"{MAX_BUCKETS:,}): choose a wider histogram or a narrower created range."
    )


def check_range(after: datetime | None, before: datetime | None, width: Width) -> None:
    """Refuse a closed range that spans more than `MAX_BUCKETS` buckets of `width`."""
    if after is None or before is None:
        return
    count = count_buckets(after, before, width)
    if count > MAX_BUCKETS:
        raise _too_many(count, width)


def read_buckets(buckets: Iterable[dict[str, Any]], width: Width) -> list[tuple[str, int]]:
    """(bucket start, count) in time order from the aggregation's buckets."""
    sums: dict[int, int] = {}
    for bucket in buckets:
        start = _bucket_start(int(bucket["key"]), width)
        sums[start] = sums.get(start, 0) + int(bucket["doc_count"])
    if len(sums) > MAX_BUCKETS:
        raise _too_many(len(sums), width)
    return [(format_micros(start), count) for start, count in sorted(sums.items())]
