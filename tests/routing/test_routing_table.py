"""The one-URL routing tables against the two real applications, without servers.

The proxy's rules (the nginx map in deploy/proxy/one-url.conf.template, evaluated here the
way nginx evaluates a map of regular expressions: in order, first match) and the Ingress
(deploy/k8s/components/one-url, Kubernetes' path matching: Exact, then the longest
Prefix by path element) are checked against every route of Prefect 3.9.1's artifact
router and of this service's app: a request goes to this service exactly when it serves
that method and path as Prefect would, and everything else goes to Prefect.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.server.api.artifacts import router as prefect_artifacts

from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings
from tests.routing.processes import TEMPLATE, render_template

INGRESS = Path(__file__).resolve().parents[2] / "deploy/k8s/components/one-url/ingress.yaml"
SEARCH, PREFECT = "artifact_search", "prefect_server"
EXAMPLE_ID = str(uuid.uuid4())


def _example(path: str) -> str:
    """A concrete path for a route template (`{id:uuid}` -> a UUID, `{key}` -> a key)."""
    path = re.sub(r"\{\w*id(:uuid)?\}", EXAMPLE_ID, path)
    return re.sub(r"\{\w+(:\w+)?\}", "my-key", path)


def _nginx_map() -> list[tuple[str, str]]:
    conf = render_template(
        TEMPLATE.read_text(),
        {"PREFECT_UPSTREAM": "p:1", "SEARCH_UPSTREAM": "s:1", "PROXY_LISTEN": "1"},
    )
    block = conf.split('map "$request_method $uri" $one_url_upstream {', 1)[1].split("}\n", 1)[0]
    tokens = re.findall(r'"[^"]*"|[^\s;]+', block)
    pairs = [(tokens[i].strip('"'), tokens[i + 1]) for i in range(0, len(tokens), 2)]
    assert all(key == "default" or key.startswith("~") for key, _ in pairs), pairs
    return pairs


def _nginx_upstream(method: str, path: str) -> str:
    pairs = _nginx_map()
    for key, value in pairs:
        if key.startswith("~") and re.search(key[1:], f"{method} {path}"):
            return value
    return dict(pairs)["default"]


def _ingress_backend(path: str) -> str:
    """The Service an Ingress sends `path` to (Kubernetes' matching rules)."""
    ingress: dict[str, Any] = yaml.safe_load_all(INGRESS.read_text()).__next__()
    best: tuple[int, int, str] | None = None
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            rule_path, kind = entry["path"], entry["pathType"]
            if kind == "Exact":
                matched = path == rule_path
            else:
                assert kind == "Prefix"
                elements = [e for e in rule_path.split("/") if e]
                matched = path.split("/")[1 : len(elements) + 1] == elements
            if matched:
                rank = (
                    len(rule_path),
                    1 if kind == "Exact" else 0,
                    entry["backend"]["service"]["name"],
                )
                best = max(best, rank) if best else rank
    assert best is not None, path
    return best[2]


def _served_here() -> set[tuple[str, str]]:
    """(method, example path) of every Prefect-artifact and extension route of the app."""
    app = create_app(QuerySettings(), ElasticsearchSettings())
    return {
        (method, _example(route.path))
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if route.path.startswith(("/api/artifacts", "/ext/")) and method != "HEAD"
    }


def _prefect_artifact_routes() -> set[tuple[str, str]]:
    return {
        (method, "/api" + _example(route.path))
        for route in prefect_artifacts.routes
        for method in getattr(route, "methods", None) or ()
    }


def test_nginx_sends_exactly_the_served_routes_here() -> None:
    here = _served_here()
    prefects = _prefect_artifact_routes()
    # every artifact read Prefect defines is served here; its writes are not
    assert {r for r in prefects if r[0] in ("POST", "GET") and r[1] != "/api/artifacts/"} <= here
    for method, path in prefects | here:
        want = SEARCH if (method, path) in here else PREFECT
        assert _nginx_upstream(method, path) == want, (method, path)
    for method, path in [
        ("POST", "/api/artifacts/"),
        ("PATCH", f"/api/artifacts/{EXAMPLE_ID}"),
        ("DELETE", f"/api/artifacts/{EXAMPLE_ID}"),
        ("GET", "/api/artifacts/not-a-uuid-but-a-key"),  # Prefect's route matches UUIDs only
        ("GET", "/api/artifacts/filter"),
        ("POST", "/api/flows/filter"),
        ("GET", "/api/events/in"),
        ("GET", "/api/health"),
        ("GET", "/api/admin/version"),
        ("GET", "/api/csrf-token"),
        ("GET", "/"),
        ("GET", "/runs/flow-run/x"),
        ("GET", "/extension"),
    ]:
        assert _nginx_upstream(method, path) == PREFECT, (method, path)


def test_the_ingress_sends_the_searches_here_and_the_rest_to_prefect() -> None:
    here = _served_here()
    for method, path in _prefect_artifact_routes() | here:
        backend = _ingress_backend(path)
        if (method == "POST" and (method, path) in here) or path.startswith("/ext/"):
            assert backend == "artifact-search-query", (method, path)
        else:
            # a path Prefect also serves for writes cannot be split by method here
            assert backend == "prefect-server", (method, path)
    for path in ["/", "/api/flows/filter", "/api/events/in", "/api/health", "/extension"]:
        assert _ingress_backend(path) == "prefect-server", path
    # no rule sends a path here that the service does not serve
    ingress = next(yaml.safe_load_all(INGRESS.read_text()))
    paths = {p[1] for p in here}
    for entry in ingress["spec"]["rules"][0]["http"]["paths"]:
        if entry["backend"]["service"]["name"] == "artifact-search-query":
            assert entry["path"] in paths or any(
                p.startswith(entry["path"] + "/") for p in paths
            ), entry["path"]


def test_the_template_renders_only_its_own_variables() -> None:
    values = {"PREFECT_UPSTREAM": "p:1", "SEARCH_UPSTREAM": "s:1", "PROXY_LISTEN": "1"}
    assert "${" not in render_template(TEMPLATE.read_text(), values)
    with pytest.raises(ValueError):
        render_template(TEMPLATE.read_text() + "${NOT_A_VARIABLE}", values)
    with pytest.raises(KeyError):
        render_template(TEMPLATE.read_text(), {})


def test_the_compose_override_serves_the_same_template() -> None:
    """deploy/compose.one-url.yaml: the proxy renders this template with every one of its
    variables, pointing at the compose services' real ports, and Prefect is 3.9.1."""
    import prefect

    deploy = TEMPLATE.parents[1]
    base = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]
    override = yaml.safe_load((deploy / "compose.one-url.yaml").read_text())["services"]
    proxy = override["proxy"]
    (mount,) = proxy["volumes"]
    source, target, _ = mount.split(":")
    assert (deploy / source).resolve() == TEMPLATE
    assert target.startswith("/etc/nginx/templates/") and target.endswith(".template")
    env = proxy["environment"]
    assert set(env) == {"PREFECT_UPSTREAM", "SEARCH_UPSTREAM", "PROXY_LISTEN"}
    host, port = env["SEARCH_UPSTREAM"].split(":")
    assert host in base and base[host]["command"][-2:] == ["--port", port]
    host, port = env["PREFECT_UPSTREAM"].split(":")
    assert host in override and override[host]["command"][-2:] == ["--port", port]
    assert proxy["ports"] == [f"127.0.0.1:4280:{env['PROXY_LISTEN']}"]
    assert override["prefect"]["image"].split(":")[1].startswith(prefect.__version__ + "-")
