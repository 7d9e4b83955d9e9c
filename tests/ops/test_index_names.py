"""IndexNames.write_targets: replay's retargeting leaves every existing caller unchanged."""

from __future__ import annotations

from services.es.indices import (
    ARTIFACTS_MAPPING,
    COLLECTIONS_MAPPING,
    CONTROL_MAPPING,
    SCHEMA_VERSION,
    IndexNames,
)


def test_default_names_are_the_aliases() -> None:
    names = IndexNames("p-")
    assert names.write_targets is None
    assert names.all_aliases() == ("p-artifacts", "p-collections", "p-control")
    assert names.concrete(names.artifacts) == f"p-artifacts-v{SCHEMA_VERSION}"
    assert names.mapping_for("p-control") is CONTROL_MAPPING


def test_retarget_points_the_engine_at_a_new_version() -> None:
    names = IndexNames("p-").retarget(7)
    assert (names.artifacts, names.collections, names.control) == (
        "p-artifacts-v7",
        "p-collections-v7",
        "p-control-v7",
    )
    assert names.alias("artifacts") == "p-artifacts"
    assert names.mapping_for("p-artifacts-v7") is ARTIFACTS_MAPPING
    assert names.mapping_for("p-collections") is COLLECTIONS_MAPPING
    assert names.prefix == "p-" and names == IndexNames("p-").retarget(7)


def test_artifact_and_collection_indices_are_sorted_by_id_descending() -> None:
    from services.es.indices import index_settings

    for mapping in (ARTIFACTS_MAPPING, COLLECTIONS_MAPPING):
        settings = index_settings(3, 1, mapping)
        assert settings["sort.field"] == ["id_hi", "id_lo"]
        assert settings["sort.order"] == ["desc", "desc"]
        assert (settings["number_of_shards"], settings["number_of_replicas"]) == (3, 1)
    assert "sort.field" not in index_settings(1, 0, CONTROL_MAPPING)
