"""Which webhook URLs the allow-list lets through (alerts/egress.py), and bad settings."""

from __future__ import annotations

import pytest

from alerts.egress import AllowedHostsError, parse_allowed_hosts, webhook_refusal


def test_nothing_is_allowed_by_default() -> None:
    allowed = parse_allowed_hosts("")
    assert allowed.empty
    refusal = webhook_refusal("http://127.0.0.1:8080/x", allowed)
    assert refusal is not None and "ALERTS_WEBHOOK_ALLOWED_HOSTS" in refusal


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:9/x", True),
        ("https://10.1.200.3/hook", True),
        ("http://10.2.0.1/hook", False),
        ("http://[::1]:8080/", True),
        ("http://169.254.169.254/latest/meta-data", False),
        ("https://HOOKS.example.com/a", True),
        ("https://hooks.example.com./a", True),
        ("https://evil-hooks.example.com/a", False),
        ("https://a.b.corp.example/a", True),
        ("https://corp.example/a", False),  # the wildcard is for subdomains only
        ("https://corp.example.attacker.net/a", False),
        ("http://localhost/x", False),  # names are matched as names, never resolved
    ],
)
def test_hosts_wildcards_and_cidrs(url: str, ok: bool) -> None:
    allowed = parse_allowed_hosts(" 127.0.0.1, 10.1.0.0/16 ,::1,hooks.example.com,*.corp.example")
    assert (webhook_refusal(url, allowed) is None) is ok


def test_star_allows_any_host() -> None:
    assert webhook_refusal("http://169.254.169.254/", parse_allowed_hosts("*")) is None


@pytest.mark.parametrize("bad", ["http://x", "a b", "*.", "10.0.0.0/99", "host/path", "*.a..b"])
def test_bad_entries_are_refused(bad: str) -> None:
    with pytest.raises(AllowedHostsError):
        parse_allowed_hosts(bad)
