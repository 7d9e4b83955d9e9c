"""Index names, aliases, mappings and settings as plain data (docs/document-model.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 4

_KW: dict[str, Any] = {"type": "keyword"}
_LONG: dict[str, Any] = {"type": "long"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_SORT_LONG: dict[str, Any] = {"type": "long", "index": False}  # doc values only
_STORED_ONLY: dict[str, Any] = {"type": "keyword", "index": False, "doc_values": False}
_OPAQUE: dict[str, Any] = {"type": "object", "enabled": False}
# the standard analyzer (core). Not `index_phrases`: at 1M it took a phrase query from 13
# to 10 ms of Elasticsearch, and cost 30 % more Elasticsearch time on a raw bulk load, 8 %
# on the indexer's, and 5 % more index (docs/benchmarks/RESULTS.md)
_TEXT: dict[str, Any] = {"type": "text"}
# the folded key's trigrams (services/trigrams.py): positions for phrases, nothing to score
_TRIGRAMS: dict[str, Any] = {"type": "text", "analyzer": "whitespace", "norms": False}


def _obj(**fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "dynamic": "strict", "properties": fields}


_FLOW_RUN = _obj(
    id=_KW,
    name=_KW,
    name_ci=_KW,
    flow_id=_KW,
    deployment_id=_KW,
    work_queue_name=_KW,
    flow_version=_KW,
    tags=_KW,
    state_type=_KW,
    state_name=_KW,
    start_time_us=_LONG,
    end_time_us=_LONG,
    expected_start_time_us=_LONG,
    next_scheduled_start_time_us=_LONG,
    start_or_expected_us=_LONG,
    parent_task_run_id=_KW,
    parent_flow_run_id=_KW,
    idempotency_key=_KW,
    created_by_id=_KW,
    created_by_type=_KW,
    created_by_set=_BOOL,
)
_FLOW = _obj(id=_KW, name=_KW, name_ci=_KW, tags=_KW, has_deployment=_BOOL)
_DEPLOYMENT = _obj(
    id=_KW,
    name=_KW,
    name_ci=_KW,
    flow_id=_KW,
    flow_name_ci=_KW,
    paused=_BOOL,
    tags=_KW,
    work_queue_name=_KW,
)
_TASK_RUN = _obj(
    id=_KW,
    name=_KW,
    name_ci=_KW,
    flow_run_id=_KW,
    tags=_KW,
    state_type=_KW,
    state_name=_KW,
    start_time_us=_LONG,
    end_time_us=_LONG,
    expected_start_time_us=_LONG,
    has_subflow_run=_BOOL,
)
_REFS = {"fr": _FLOW_RUN, "flow": _FLOW, "dep": _DEPLOYMENT, "tr": _TASK_RUN}
_COMMON = {
    "id": _KW,
    "id_hi": _SORT_LONG,
    "id_lo": _SORT_LONG,
    "created": _STORED_ONLY,
    "updated": _STORED_ONLY,
    "key": _KW,
    "key_ci": _KW,
    "key_tri": _TRIGRAMS,
    "type": _KW,
    "description": {"type": "text", "index": False},
    "data": _OPAQUE,
    "metadata_": _OPAQUE,
    "flow_run_id": _KW,
    "task_run_id": _KW,
    "created_us": _LONG,
    "updated_us": _LONG,
    # the searchable text (services/search_text.py, docs/search.md): never in a response
    "x": _obj(key=_TEXT, description=_TEXT, data=_TEXT, metadata=_TEXT),
    # typed values of metadata and data, `key\x00encoded value` terms (a bounded mapping
    # whatever the user's keys: services/search_text.py `typed_values`)
    "v": _obj(k=_KW, s=_KW, n=_KW, d=_KW, b=_KW),
}

SCHEMA_META = "schema_version"
"""`_meta` key of the artifact and collection mappings: the `SCHEMA_VERSION` that made the
index. Indices of older releases lack it; the query service is not ready on them."""

ARTIFACTS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "_meta": {SCHEMA_META: SCHEMA_VERSION},
    "properties": {
        **_COMMON,
        "live": _BOOL,
        "version": _LONG,
        **_REFS,
    },
}
COLLECTIONS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "_meta": {SCHEMA_META: SCHEMA_VERSION},
    "properties": {**_COMMON, "latest_id": _KW, "live": _BOOL, **_REFS},
}
CONTROL_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {"epoch": _LONG, "group": _KW, "topic": _KW},
}
"""Partition epochs of the indexer (indexer/writer.py `ControlEpochs`)."""

SAVED_SEARCHES_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "id": _KW,
        "name": _KW,
        "description": {"type": "text", "index": False},
        "search": _OPAQUE,  # the search request body, validated by the API
        "webhook": _OPAQUE,
        "fingerprint": _KW,
        "created": _STORED_ONLY,
        "updated": _STORED_ONLY,
        "created_us": _LONG,
        "notify_existing": _BOOL,
        "scanned_fingerprint": _KW,  # the fingerprint whose existing matches were alerted
    },
}
"""Saved searches (alerts/model.py): user data, not derived from the topics."""

ALERT_LEDGER_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "search_id": _KW,
        "artifact_id": _KW,
        "artifact_version": _LONG,
        "state": _KW,
        "claimed_us": _LONG,
        "message": _OPAQUE,  # the alert as published (re-published from here after a crash)
    },
}
"""One document per alert ever raised, `_id` = the alert id (alerts/ledger.py)."""


@dataclass(frozen=True)
class IndexNames:
    """Aliases and their versioned concrete indices for one prefix.

    `write_targets`, when set, names three concrete indices (artifacts,
    collections, control) that the `artifacts`/`collections`/`control`
    properties return instead of the aliases: replay runs the indexer engine over
    a new, not yet aliased index version that way. Every existing caller leaves
    it unset and gets the aliases.
    """

    prefix: str
    version: int = SCHEMA_VERSION
    write_targets: tuple[str, str, str] | None = None

    @property
    def artifacts(self) -> str:
        """Alias of the artifact documents (or its write target)."""
        return self.write_targets[0] if self.write_targets else self.alias("artifacts")

    @property
    def collections(self) -> str:
        """Alias of the collection documents (or its write target)."""
        return self.write_targets[1] if self.write_targets else self.alias("collections")

    @property
    def control(self) -> str:
        """Alias of the indexer's partition epochs (or its write target)."""
        return self.write_targets[2] if self.write_targets else self.alias("control")

    def alias(self, kind: str) -> str:
        """The alias of `kind` ('artifacts', 'collections', 'control', 'saved-searches',
        'alert-ledger'), never a target."""
        return f"{self.prefix}{kind}"

    def concrete(self, alias: str, version: int | None = None) -> str:
        """The concrete index behind `alias` at a schema/build version."""
        return f"{alias}-v{self.version if version is None else version}"

    @property
    def saved_searches(self) -> str:
        """Alias of the saved searches (never retargeted: replay leaves them alone)."""
        return self.alias("saved-searches")

    @property
    def alert_ledger(self) -> str:
        """Alias of the alerts' ledger (never retargeted: replay leaves it alone)."""
        return self.alias("alert-ledger")

    def alerting_indices(self) -> dict[str, dict[str, Any]]:
        """The aliases of the alerting indices and their mappings. They hold user data and
        what was announced, not documents derived from the topics, so `replay` never
        rebuilds them and they are not among `all_aliases`."""
        return {
            self.saved_searches: SAVED_SEARCHES_MAPPING,
            self.alert_ledger: ALERT_LEDGER_MAPPING,
        }

    def all_aliases(self) -> tuple[str, str, str]:
        """The three aliases (the write targets when they are set)."""
        return (self.artifacts, self.collections, self.control)

    def retarget(self, version: int) -> IndexNames:
        """The same names with the concrete indices of `version` as write targets."""
        a, c, e = (self.concrete(self.alias(k), version) for k in _KINDS)
        return IndexNames(self.prefix, self.version, (a, c, e))

    def mapping_for(self, alias: str) -> dict[str, Any]:
        """The mapping of the index behind `alias` (an alias or a write target)."""
        mappings = dict(
            zip(_KINDS, (ARTIFACTS_MAPPING, COLLECTIONS_MAPPING, CONTROL_MAPPING), strict=True)
        )
        by_name = {self.alias(k): m for k, m in mappings.items()}
        if self.write_targets:
            by_name.update(zip(self.write_targets, mappings.values(), strict=True))
        return by_name[alias]


_KINDS = ("artifacts", "collections", "control")


def outdated_indices(mappings: dict[str, Any], version: int = SCHEMA_VERSION) -> list[str]:
    """The indices of a `GET <index>/_mapping` answer that an older schema version made
    (no `_meta.schema_version`, or a smaller one), sorted."""
    old = []
    for index, body in mappings.items():
        made_by = (body.get("mappings", {}).get("_meta") or {}).get(SCHEMA_META)
        if not isinstance(made_by, int) or made_by < version:
            old.append(index)
    return sorted(old)


MAX_RESULT_WINDOW = 50_000
"""`from + size` allowed by the indices (Elasticsearch's default is 10 000).

Prefect pages with OFFSET: up to this depth one search answers (each shard keeps a
queue of `from + size` sort keys, a few MiB at most); deeper pages are walked with
`search_after` under a point in time (query/paging.py)."""


def is_document_mapping(mapping: dict[str, Any]) -> bool:
    """Whether `mapping` is an artifact or collection index's (the documents searched)."""
    return "id_hi" in mapping["properties"]


def mapping_additions(
    existing: dict[str, Any], wanted: dict[str, Any], path: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """What `wanted` (a mapping's `properties`) adds to `existing` (an index's live ones),
    and the fields both have but define differently.

    Elasticsearch adds fields to a live index but refuses to change one, and refuses the
    whole request when any field would change. The additions alone are what an index made
    by an earlier release can take; the differing fields (another analyzer, another type)
    stay as they are until `replay` builds new indices.
    """
    additions: dict[str, Any] = {}
    differing: list[str] = []
    for name, field in wanted.items():
        where = f"{path}{name}"
        have = existing.get(name)
        if have is None:
            additions[name] = field
            continue
        if "properties" in field and "properties" in have:
            inner, diff = mapping_additions(have["properties"], field["properties"], where + ".")
            if inner:
                additions[name] = {**field, "properties": inner}
            differing += diff
            continue
        # Elasticsearch returns what was set, defaults left out, as this module writes them
        if {k: v for k, v in have.items() if k != "properties"} != {
            k: v for k, v in field.items() if k != "properties"
        }:
            differing.append(where)
    return additions, differing


def index_settings(
    shards: int, replicas: int, mapping: dict[str, Any], refresh_interval: str = "1s"
) -> dict[str, Any]:
    """Settings for an index with `mapping`: sized by configuration; an artifact or
    collection index is refreshed every `refresh_interval` (`ELASTICSEARCH_REFRESH_INTERVAL`,
    ADR 0013), any other every second.

    Artifact and collection indices are *sorted* by id, descending: Prefect's default
    order (`ID_DESC`) then reads the first hits of each segment and stops (early
    termination, as `track_total_hits` is off) instead of ranking every match.
    """
    settings: dict[str, Any] = {
        "number_of_shards": shards,
        "number_of_replicas": replicas,
        "refresh_interval": refresh_interval if is_document_mapping(mapping) else "1s",
        "max_result_window": MAX_RESULT_WINDOW,
    }
    if is_document_mapping(mapping):
        settings["sort.field"] = ["id_hi", "id_lo"]
        settings["sort.order"] = ["desc", "desc"]
    return settings
