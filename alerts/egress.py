"""PURE: where webhooks may be sent (`ALERTS_WEBHOOK_ALLOWED_HOSTS`).

The alerts worker runs next to Elasticsearch and Kafka, often without authentication
between them; a webhook URL is chosen by whoever can save a search. Without a restriction
the worker is a proxy into that network (Elasticsearch's own API, a cloud metadata
address). So webhooks are refused unless their host is allowed, and the default allows
nothing: the operator lists the receivers.

Entries, comma-separated: a host name (`hooks.example.com`, exact, case-insensitive), a
domain wildcard (`*.example.com`: its subdomains, not the domain itself), an IP address or
a CIDR (`10.1.0.0/16`, `::1`), or `*` (any host — only where egress is restricted by the
network). CIDRs match URLs whose host is an IP literal; host names are matched as names and
never resolved (a name entry trusts whoever controls that name's DNS).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedHostsError(ValueError):
    """An entry of ALERTS_WEBHOOK_ALLOWED_HOSTS is neither a host name, a wildcard, an IP
    address nor a CIDR (the process refuses to start)."""


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """The parsed allow-list."""

    any_host: bool = False
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing is allowed (the default)."""
        return not (self.any_host or self.names or self.suffixes or self.networks)


def parse_allowed_hosts(raw: str) -> AllowedHosts:
    """The allow-list of a setting value (see the module docstring)."""
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    any_host = False
    for entry in (e.strip().lower() for e in raw.split(",")):
        if not entry:
            continue
        if entry == "*":
            any_host = True
        elif entry.startswith("*."):
            if not _is_name(entry[2:]):
                raise AllowedHostsError(f"not a domain wildcard: {entry!r}")
            suffixes.append(entry[1:])
        else:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or not _is_name(entry):
                raise AllowedHostsError(f"neither a host name, an IP address nor a CIDR: {entry!r}")
            names.add(entry)
    return AllowedHosts(any_host, frozenset(names), tuple(suffixes), tuple(networks))


def _is_name(text: str) -> bool:
    labels = text.split(".")
    return all(
        label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)
        for label in labels
    )


def webhook_refusal(url: str, allowed: AllowedHosts) -> str | None:
    """None when `url` may receive webhooks, else a sentence saying why not."""
    if allowed.any_host:
        return None
    if allowed.empty:
        return (
            "Webhooks are disabled: no host is allowed (the operator sets "
            "ALERTS_WEBHOOK_ALLOWED_HOSTS to the receivers' hosts or CIDRs)."
        )
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if any(address in network for network in allowed.networks):
            return None
    elif host in allowed.names or any(host.endswith(s) for s in allowed.suffixes):
        return None
    return (
        f"The webhook host {host!r} is not allowed (ALERTS_WEBHOOK_ALLOWED_HOSTS lists the "
        "hosts and CIDRs webhooks may be sent to)."
    )
