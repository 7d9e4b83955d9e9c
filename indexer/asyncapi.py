"""Write the AsyncAPI document of the event topics: `python -m indexer.asyncapi [PATH]`.

The checked-in copy is docs/asyncapi.json; a test regenerates it from the code
and requires it to be identical, so the document cannot drift from the models.
"""

from __future__ import annotations

import sys
from pathlib import Path

from indexer.app import asyncapi_json

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"


def main() -> None:
    """Write the document to the given path (default docs/asyncapi.json)."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    path.write_text(asyncapi_json())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
