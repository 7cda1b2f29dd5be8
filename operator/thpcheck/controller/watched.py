"""What kopf watches and runs handlers for, in one place: the registry
(``controller/operator.py``) registers these, and the operator asks the API whether any of
them exists (``handled_listings``) when no kopf event may ever come to say it has indexed."""

from __future__ import annotations

from collections.abc import Mapping

from thpcheck.contract import names

CHECKS = (names.GROUP, names.VERSION, names.CHECK_PLURAL)
RESULTS = (names.GROUP, names.VERSION, names.RESULT_PLURAL)
AGENT_PODS = {names.POD_ROLE_LABEL: names.AGENT_ROLE}
MITIGATION_PODS = {names.POD_ROLE_LABEL: names.MITIGATION_ROLE}
OUR_DAEMONSETS = {names.MANAGED_BY: names.MANAGER}


def selector(labels: Mapping[str, str]) -> str:
    """A label selector string for exact-value labels."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def handled_listings(namespace: str) -> list[tuple[str, dict[str, str]]]:
    """(path, query) of one ``list`` (limit 1) per kind *and filter* that a kopf event handler
    fires on: if none lists an item, kopf will call no handler, so its indexes are as full
    (empty) as they will get without a new object."""
    checks = f"/apis/{names.GROUP}/{names.VERSION}/{names.CHECK_PLURAL}"
    results = f"/apis/{names.GROUP}/{names.VERSION}/{names.RESULT_PLURAL}"
    pods = f"/api/v1/namespaces/{namespace}/pods"
    daemonsets = f"/apis/apps/v1/namespaces/{namespace}/daemonsets"
    one = {"limit": "1"}
    return [
        (checks, one),
        (results, one),
        (pods, {**one, "labelSelector": selector(AGENT_PODS)}),
        (pods, {**one, "labelSelector": selector(MITIGATION_PODS)}),
        (daemonsets, {**one, "labelSelector": selector(OUR_DAEMONSETS)}),
    ]
