"""Names, labels and annotations the operator writes: the keys of the operator contract.

Kubernetes limits names to 253 characters and label values to 63, while a ThpCheck and a
node may each be 253 characters long; the helpers here shorten deterministically (prefix +
hash), so the same inputs always give the same object, across restarts and replicas.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "thpcheck.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CHECK_KIND = "ThpCheck"
CHECK_PLURAL = "thpchecks"
RESULT_KIND = "ThpNodeResult"
RESULT_PLURAL = "thpnoderesults"
CRD_NAMES = (f"{CHECK_PLURAL}.{GROUP}", f"{RESULT_PLURAL}.{GROUP}")
SCHEMA_VERSION_ANNOTATION = f"{GROUP}/schema-version"
SCHEMA_VERSION = 7  # the CRDs' thpcheck.io/schema-version this operator needs (at least)
# 2: status.predicted/prediction on results, status.disagreements on checks (an older CRD
# would prune them silently, and the status would be rewritten on every reconcile).
# 3: spec.runDeadline on checks (an older CRD would prune it: the default would apply).
# 4: spec.diskHeadroom (pruned, a user's thresholds would silently be the defaults) and
# status.unschedulable on checks.
# 5: status.proof on results (a pruned proof would lift the protection of proven nodes).
# 6: spec.remediation.condition and .taint on checks (an older CRD would prune them: asked
#    for, neither would be set).

FINALIZER = f"{GROUP}/finalizer"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "thpcheck-operator"
APP_NAME = "app.kubernetes.io/name"
APP = "thp-checker"
COMPONENT = "app.kubernetes.io/component"

# Labels on agent pods, results and nodes.
CHECK_LABEL = f"{GROUP}/check"
NODE_LABEL = f"{GROUP}/node"
VERDICT_LABEL = f"{GROUP}/verdict"
MITIGATED_LABEL = f"{GROUP}/mitigated"
MITIGATE_LABEL = f"{GROUP}/mitigate"  # the mitigation DaemonSet's node selector
EXCLUDE_LABEL = f"{GROUP}/exclude"  # set by admins: never touched
POD_ROLE_LABEL = f"{GROUP}/component"  # agent | mitigation; the operator's pod watch selects it
TEMPLATE_LABEL = f"{GROUP}/template"  # standby | check

# Annotations.
CHECK_NAME_ANNOTATION = f"{GROUP}/check-name"  # the full name when the label is hashed
RUN_ANNOTATION = f"{GROUP}/run"  # bumped to re-run every node (schedule.interval)
TEMPLATE_HASH_ANNOTATION = f"{GROUP}/template-hash"
CONTENT_HASH_ANNOTATION = f"{GROUP}/content-hash"
CORDONED_BY_ANNOTATION = f"{GROUP}/cordoned-by"
LABELLED_BY_ANNOTATION = f"{GROUP}/labelled-by"
MITIGATE_BY_ANNOTATION = f"{GROUP}/mitigate-by"
CONDITION_BY_ANNOTATION = f"{GROUP}/condition-by"  # the check that set the node condition
TAINTED_BY_ANNOTATION = f"{GROUP}/tainted-by"

# The node condition (spec.remediation.condition) and taint (spec.remediation.taint).
NODE_CONDITION = "ThpDataLoss"
TAINT_KEY = f"{GROUP}/data-loss"
TAINT_VALUE = "affected"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule")

AGENT_ROLE = "agent"
MITIGATION_ROLE = "mitigation"
MITIGATION_DAEMONSET = "thpcheck-mitigation"
# Restores khugepaged on every node not labelled for mitigation where a record is left (a
# mitigation pod killed before it could restore); see contract/mitigation.py.
RESTORE_DAEMONSET = "thpcheck-mitigation-restore"
RESTORE_COMPONENT = "mitigation-restore"  # app.kubernetes.io/component of its pods

NAME_LIMIT = 253
LABEL_LIMIT = 63
_HASH_LENGTH = 10
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def digest(*parts: str, length: int = _HASH_LENGTH) -> str:
    """A short, stable hex digest of the parts (joined by '/'): the project's one hash."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def _trim(text: str, limit: int) -> str:
    """``text[:limit]`` without trailing separators, so the joined name stays valid."""
    return text[:limit].rstrip("-._")


def result_name(check: str, node: str) -> str:
    """``<check>.<node>``, or ``<check[:60]>.<node[:170]>.<hash>`` when that is too long."""
    name = f"{check}.{node}"
    if len(name) <= NAME_LIMIT:
        return name
    return f"{_trim(check, 60)}.{_trim(node, 170)}.{digest(check, node)}"


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a readable prefix plus a hash."""
    if len(text) <= LABEL_LIMIT and _LABEL_VALUE.match(text):
        return text
    prefix = _trim(re.sub(r"[^-A-Za-z0-9_.]", "-", text).lstrip("-._"), LABEL_LIMIT - 11)
    return f"{prefix}-{digest(text)}" if prefix else digest(text)


def agent_daemonset_name(check: str) -> str:
    """``thpcheck-<check>``, hashed beyond 63 characters (pod and revision names derive
    from it)."""
    name = f"thpcheck-{check}"
    if len(name) <= LABEL_LIMIT:
        return name
    return f"thpcheck-{_trim(check, 42)}-{digest(check)}"
