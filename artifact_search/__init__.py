"""The composition roots: the `artifact-search` command and the wiring of each deployable.

This package sits above `services/` (the shared library) and the deployables `indexer/`,
`query/` and `alerts/`: it may import all of them, and none of them imports it
(`tests/unit/test_layering.py`; docs/adr/0010-composition-roots-and-dev-tools.md).
"""
