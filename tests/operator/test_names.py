"""Deterministic names within Kubernetes' limits, however long the check and node names."""

from __future__ import annotations

import re

import pytest

from thpcheck.contract import names

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
LONG_NODE = ".".join(["ip-10-0-0-1"] * 21)[:253].rstrip(".-")  # a 2xx-character node name


def test_short_result_name_is_check_dot_node() -> None:
    assert names.result_name("weekly", "node-1") == "weekly.node-1"


@pytest.mark.parametrize(("check", "node"), [
    ("c" * 253, "n" * 253), ("weekly", LONG_NODE), ("a" * 200 + "-", "b." * 100 + "c"),
    ("x" * 59 + "-" + "y" * 100, "z" * 169 + "." + "w" * 80),
])
def test_long_result_names_are_valid_and_distinct(check: str, node: str) -> None:
    name = names.result_name(check, node)
    assert len(name) <= 253
    assert DNS_SUBDOMAIN.match(name), name
    assert name == names.result_name(check, node)  # stable across restarts
    assert name != names.result_name(check, node + "x")
    assert name != names.result_name(check + "x", node)


def test_label_values_are_hashed_only_when_needed() -> None:
    assert names.label_value("node-1") == "node-1"
    long = names.label_value(LONG_NODE)
    assert len(long) <= 63 and LABEL_VALUE.match(long)
    assert long.startswith("ip-10-0-0-1")
    assert long != names.label_value(LONG_NODE[:-1])
    odd = names.label_value("-" * 70)
    assert len(odd) <= 63 and LABEL_VALUE.match(odd)


def test_daemonset_names_fit_in_63_characters() -> None:
    assert names.agent_daemonset_name("weekly") == "thpcheck-weekly"
    long = names.agent_daemonset_name("c" * 253)
    assert len(long) <= 63 and DNS_SUBDOMAIN.match(long)
    assert long != names.agent_daemonset_name("c" * 252)
