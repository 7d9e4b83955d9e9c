"""Seeded test and demo data: Prefect-shaped datasets and their event streams.

A development tool, not part of the service: the wheel and the image do not ship it
(`pyproject.toml`'s package list), and no production package imports it
(`tests/unit/test_layering.py`). Used by the tests, the benchmarks and `make up`'s demo data
(`python -m datagen`).
"""
