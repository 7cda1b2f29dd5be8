"""thp-checker pre-delete hook: delete every ThpCheck, then confirm nothing is left behind.

Runs (as ``python -c``, in the project image, which has the thpcheck package and the
kubernetes client) before Helm deletes the operator:

1. Deletes every ThpCheck and waits until all are gone: the operator's finalizer on each
   undoes what that check did (node labels and annotations, cordons, the mitigation label,
   results) before it lets the ThpCheck go.
2. Confirms the nodes are clean: no node carries a mark of a ThpCheck (the operator's orphan
   sweep undoes marks whose ThpCheck is gone), and no node is labelled
   ``thpcheck.io/mitigate=true`` by hand (that fails at once: the uninstall would lift a
   mitigation it cannot confirm; remove the label first).
3. Confirms khugepaged is restored: the mitigation DaemonSet is gone (the operator deletes it
   once no node is labelled for it) and the restore DaemonSet (on every node not labelled
   for mitigation) is Ready on every node it should run on, so no mitigation record is left
   anywhere (each restore pod wrote the recorded value back and read it back, or found
   none); the hook then deletes it.

Exit 0 when all holds (or the CRD is not installed and nothing is left), 1 otherwise, naming
the ThpChecks or nodes and what is left after THPCHECK_CLEANUP_TIMEOUT seconds: Helm then
stops the uninstall, and docs/helm.md says what to do.

Credentials: thp-checker's one order ($KUBECONFIG, ~/.kube/config, the pod's
ServiceAccount; tests run it with a kubeconfig holding the hook's ServiceAccount token).
Needs list and delete on thpchecks.thpcheck.io, list on nodes, list on pods in
THPCHECK_NAMESPACE, get on the DaemonSets ``thpcheck-mitigation`` and
``thpcheck-mitigation-restore`` there and delete on the latter; nothing else.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import kubernetes

GROUP, VERSION, PLURAL = "thpcheck.io", "v1alpha1", "thpchecks"
NAMED = 10  # nodes named per problem


def _load_credentials() -> None:
    """thp-checker's one credential order (thpcheck.controller.credentials): $KUBECONFIG,
    ~/.kube/config, then the pod's service account; the image has the thpcheck package."""
    from thpcheck.controller import credentials

    configuration, _ = credentials.configuration(None)
    kubernetes.client.Configuration.set_default(configuration)


def _names(api: kubernetes.client.CustomObjectsApi) -> list[str] | None:
    """Names of all ThpChecks; None when the CRD is not installed."""
    try:
        listing = cast(dict[str, Any], api.list_cluster_custom_object(GROUP, VERSION, PLURAL))
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return sorted(item["metadata"]["name"] for item in listing.get("items", []))


def _get(read: Any, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """A raw object (or list), None when it does not exist."""
    try:
        response = read(*args, _preload_content=False, **kwargs)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cast(dict[str, Any], json.loads(response.data))


def _listed(names: list[str]) -> str:
    more = len(names) - NAMED
    return ", ".join(names[:NAMED]) + (f" and {more} more" if more > 0 else "")


@dataclass
class Leftovers:
    """What still stands between the cluster and a clean uninstall."""

    by_hand: list[str] = field(default_factory=list)  # labelled thpcheck.io/mitigate by hand
    problems: list[str] = field(default_factory=list)  # waiting for these
    confirmed: str = ""  # the restore, once confirmed


def _leftovers(namespace: str) -> Leftovers:
    from thpcheck.specs import names
    from thpcheck.specs.mitigation import restore_confirmed, restore_nodes
    from thpcheck.specs.remediation import marked_by
    from thpcheck.specs.views import daemonset_view, node_view

    core, apps = kubernetes.client.CoreV1Api(), kubernetes.client.AppsV1Api()
    nodes = [node_view(n) for n in (_get(core.list_node) or {}).get("items", [])]
    found = Leftovers()
    found.by_hand = sorted(n.name for n in nodes if n.labels.get(names.MITIGATE_LABEL) == "true"
                           and not n.annotations.get(names.MITIGATE_BY_ANNOTATION))
    marked = sorted(f"{n.name} ({', '.join(sorted(marked_by(n)))})" for n in nodes
                    if marked_by(n))
    if marked:
        found.problems.append(f"nodes still carrying marks of a ThpCheck: {_listed(marked)}")
    if not namespace:
        return found
    if _get(apps.read_namespaced_daemon_set, names.MITIGATION_DAEMONSET, namespace):
        found.problems.append(f"DaemonSet {namespace}/{names.MITIGATION_DAEMONSET} still "
                              "present (the operator deletes it once no node is labelled)")
    body = _get(apps.read_namespaced_daemon_set, names.RESTORE_DAEMONSET, namespace)
    if body is None:
        found.confirmed = "no mitigation record left to confirm"
        return found
    view = daemonset_view(body)
    if restore_confirmed(view, nodes):
        if not found.problems:
            try:
                apps.delete_namespaced_daemon_set(names.RESTORE_DAEMONSET, namespace)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise
        found.confirmed = (f"khugepaged restore confirmed on all {view.desired} nodes not "
                           "labelled for mitigation: no mitigation record left")
        return found
    selector = f"app.kubernetes.io/component={names.RESTORE_COMPONENT}"
    pods = (_get(core.list_namespaced_pod, namespace, label_selector=selector)
            or {}).get("items", [])
    ready = {p["spec"].get("nodeName") for p in pods if any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (p.get("status") or {}).get("conditions") or [])}
    waiting = sorted(n.name for n in nodes if n.labels.get("kubernetes.io/os") == "linux"
                     and n.labels.get(names.MITIGATE_LABEL) != "true" and n.name not in ready)
    found.problems.append(
        "khugepaged restore not confirmed (no Ready restore pod: a mitigation record may be "
        f"left) on {len(waiting)} nodes: {_listed(waiting) or 'none'} (DaemonSet "
        f"{names.RESTORE_DAEMONSET}: {view.ready} of {view.desired} pods Ready, "
        f"{view.updated} current, for {restore_nodes(nodes)} nodes)")
    return found


def main() -> int:
    from thpcheck.controller.credentials import StartupError

    timeout = float(os.environ.get("THPCHECK_CLEANUP_TIMEOUT", "240"))
    namespace = os.environ.get("THPCHECK_NAMESPACE", "")
    try:
        _load_credentials()
    except StartupError as exc:
        print(f"thp-checker pre-delete hook: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit)
    api = kubernetes.client.CustomObjectsApi()
    deadline = time.monotonic() + timeout
    names = _names(api)
    if names is None:
        print("thpchecks.thpcheck.io is not installed: no ThpCheck to delete", flush=True)
    for name in names or []:
        try:
            api.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            print(f"deleting ThpCheck {name}", flush=True)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
    while names is not None:
        left = _names(api) or []
        if not left:
            print(f"all {len(names)} ThpChecks are gone; the operator undid their changes",
                  flush=True)
            break
        if time.monotonic() > deadline:
            print(f"ThpChecks still present after {timeout:.0f}s: {', '.join(left)}. The "
                  "operator removes them once it has undone their node changes: is it "
                  "running? See the ThpChecks' CleanupBlocked condition and docs/helm.md, "
                  "'Uninstall'.", file=sys.stderr, flush=True)
            return 1
        time.sleep(2)
    while True:
        found = _leftovers(namespace)
        if found.by_hand:
            print(f"nodes labelled thpcheck.io/mitigate=true by hand: {_listed(found.by_hand)}."
                  " Uninstalling would lift their mitigation without confirming the restore: "
                  "remove the label (kubectl label node NAME thpcheck.io/mitigate-) and run "
                  "the uninstall again.", file=sys.stderr, flush=True)
            return 1
        if not found.problems and found.confirmed:
            print(found.confirmed, flush=True)
            return 0
        if time.monotonic() > deadline:
            print(f"after {timeout:.0f}s: " + "; ".join(found.problems) + ". See docs/helm.md, "
                  "'Uninstall'.", file=sys.stderr, flush=True)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
