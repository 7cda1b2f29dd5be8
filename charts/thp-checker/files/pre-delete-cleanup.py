"""thp-checker pre-delete hook: delete every ThpCheck and wait until all are gone.

Runs (as ``python -c``, in the project image, which has the kubernetes client) before Helm
deletes the operator: the operator's finalizer on each ThpCheck undoes what that check did
(node labels and annotations, cordons, the mitigation label and DaemonSet, results) before
the ThpCheck disappears. Exit 0 when none is left (or the CRD is not installed), 1 when some
remain after THPCHECK_CLEANUP_TIMEOUT seconds (the operator is not running): Helm then stops
the uninstall, and docs/helm.md says how to finish by hand.

Then it deletes the shared mitigation DaemonSet, if an admin's node label kept it alive, and
waits for it to be gone (foreground deletion: its pods are gone first, and each restored the
khugepaged setting it changed on SIGTERM): a privileged DaemonSet must not outlive the operator.

Credentials: thp-checker's one order ($KUBECONFIG, ~/.kube/config, the pod's
ServiceAccount; tests run it with a kubeconfig holding the hook's ServiceAccount token).
Needs list and delete on thpchecks.thpcheck.io, and get and delete on the one DaemonSet
``thpcheck-mitigation`` in THPCHECK_NAMESPACE; nothing else.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, cast

import kubernetes

GROUP, VERSION, PLURAL = "thpcheck.io", "v1alpha1", "thpchecks"
MITIGATION_DAEMONSET = "thpcheck-mitigation"


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


def _remove_mitigation(deadline: float) -> bool:
    """Delete the shared mitigation DaemonSet (foreground) and wait; True when it is gone."""
    namespace = os.environ.get("THPCHECK_NAMESPACE", "")
    if not namespace:
        return True
    apps = kubernetes.client.AppsV1Api()
    try:
        apps.delete_namespaced_daemon_set(MITIGATION_DAEMONSET, namespace,
                                          propagation_policy="Foreground")
        print(f"deleting DaemonSet {namespace}/{MITIGATION_DAEMONSET}", flush=True)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    while time.monotonic() < deadline:
        try:
            apps.read_namespaced_daemon_set(MITIGATION_DAEMONSET, namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                print("mitigation DaemonSet gone; its pods restored khugepaged", flush=True)
                return True
            raise
        time.sleep(2)
    print(f"DaemonSet {MITIGATION_DAEMONSET} still present", file=sys.stderr, flush=True)
    return False


def main() -> int:
    from thpcheck.controller.credentials import StartupError

    timeout = float(os.environ.get("THPCHECK_CLEANUP_TIMEOUT", "240"))
    try:
        _load_credentials()
    except StartupError as exc:
        print(f"thp-checker pre-delete hook: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit)
    api = kubernetes.client.CustomObjectsApi()
    deadline = time.monotonic() + timeout
    names = _names(api)
    if names is None:
        print("thpchecks.thpcheck.io is not installed: nothing to clean up", flush=True)
        return 0 if _remove_mitigation(deadline) else 1
    for name in names:
        try:
            api.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            print(f"deleting ThpCheck {name}", flush=True)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
    while True:
        left = _names(api) or []
        if not left:
            print(f"all {len(names)} ThpChecks are gone; the operator undid their changes",
                  flush=True)
            return 0 if _remove_mitigation(deadline) else 1
        if time.monotonic() > deadline:
            print(f"ThpChecks still present after {timeout:.0f}s: {', '.join(left)}. The "
                  "operator removes them once it has undone their node changes: is it "
                  "running? See docs/helm.md, 'Uninstall'.", file=sys.stderr, flush=True)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
