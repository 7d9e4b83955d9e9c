"""`python -m datagen demo`: the seeded demo dataset as v1 events, published or written out.

A development command (`datagen` is not in the wheel or the image). By default it publishes
to the entity topics of the Kafka the `KAFKA_*` variables name, as the service reads them
(`make up` does this); `--jsonl FILE` writes the same events as JSON Lines instead, which the
image's own `artifact-search produce FILE` publishes (`make compose-demo`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from datagen.events import dataset_events, records_jsonl
from services.config import KafkaSettings
from services.kafka import publish_records


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low`, else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m datagen`."""
    parser = argparse.ArgumentParser(prog="python -m datagen", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="the seeded demo dataset as events",
        description="Generate a seeded dataset and publish it as v1 events to the entity "
        "topics (KAFKA_* variables), or write them as JSON Lines with --jsonl.",
    )
    demo.add_argument("--seed", type=_at_least(0), default=7, help="dataset seed (default 7)")
    demo.add_argument(
        "--artifacts", type=_at_least(1), default=500, help="number of artifacts (default 500)"
    )
    demo.add_argument(
        "--jsonl",
        metavar="FILE",
        default=None,
        help="write the events to FILE (for `artifact-search produce FILE`) instead of Kafka",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m datagen`."""
    args = build_parser().parse_args(argv)
    records = dataset_events(seed=args.seed, artifacts=args.artifacts)
    if args.jsonl:
        Path(args.jsonl).write_text(records_jsonl(records))
        print(f"wrote {len(records)} events to {args.jsonl}")
        return
    asyncio.run(publish_records(KafkaSettings(), records))
    print(f"published {len(records)} events")


if __name__ == "__main__":
    main()
