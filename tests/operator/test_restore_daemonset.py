"""The restore DaemonSet: where it runs, what its pod does, and how long it stays."""

from __future__ import annotations

from tests.operator.factories import node
from thpcheck.contract import names
from thpcheck.contract.agent import WorkloadConfig
from thpcheck.contract.mitigation import restore_daemonset
from thpcheck.contract.views import DaemonSetView, NodeView, daemonset_view
from thpcheck.planning.mitigation import restore_confirmed, restore_nodes, wanted_daemonsets

CONFIG = WorkloadConfig(namespace="thp-checker", image="thp-checker:test")
LINUX = {"kubernetes.io/os": "linux"}


def fleet() -> list[NodeView]:
    return [node("a", labels=LINUX), node("b", labels={**LINUX, names.MITIGATE_LABEL: "true"}),
            node("c", labels={"kubernetes.io/os": "windows"}), node("d", labels=LINUX)]


def status(desired: int, ready: int, *, generation: int = 1, observed: int = 1,
           updated: int | None = None) -> DaemonSetView:
    return DaemonSetView(name=names.RESTORE_DAEMONSET, generation=generation,
                         observed_generation=observed, desired=desired,
                         updated=desired if updated is None else updated, ready=ready,
                         available=ready)


def test_it_runs_where_no_mitigation_is_wanted_and_restores_without_credentials() -> None:
    ds = restore_daemonset(CONFIG)
    pod = ds["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [{"matchExpressions": [
        {"key": names.MITIGATE_LABEL, "operator": "NotIn", "values": ["true"]}]}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (container,) = pod["containers"]
    script = container["command"][2]
    state = "/host/var/lib/thpcheck-mitigation/mitigation.state"
    assert f"thpcheck mitigate --restore --log-format json --log-level info --host-root /host " \
           f"--state-file {state}" in script
    assert '[ "$rc" -eq 75 ]' in script and "sleep infinity" in script
    assert container["readinessProbe"]["exec"]["command"] == ["test", "!", "-e", state]
    # Its pods are not the operator's mitigation pods (their readiness means "mitigated").
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert names.POD_ROLE_LABEL not in labels
    assert ds["spec"]["selector"]["matchLabels"] == {
        names.APP_NAME: names.APP, names.COMPONENT: names.RESTORE_COMPONENT}
    assert daemonset_view(ds).template_hash


def test_the_restore_is_confirmed_only_when_every_node_it_should_run_on_is_ready() -> None:
    nodes = fleet()
    assert restore_nodes(nodes) == 2  # a and d: linux and not labelled
    assert restore_confirmed(status(2, 2), nodes)
    assert not restore_confirmed(status(2, 1), nodes)  # one node still has a record
    assert not restore_confirmed(status(1, 1), nodes)  # the controller has not counted d yet
    assert restore_confirmed(status(3, 2), nodes)  # it still counts a node deleted since
    assert not restore_confirmed(status(0, 0, observed=0), nodes)  # just created
    assert not restore_confirmed(status(2, 2, updated=1), nodes)  # an old template still runs


def test_which_daemonsets_exist() -> None:
    nodes = fleet()
    done, busy = status(2, 2), status(2, 1)
    mitigation = DaemonSetView(name=names.MITIGATION_DAEMONSET)
    # A check mitigates, or a node is labelled: both.
    assert wanted_daemonsets(mitigating=True, labelled=False, mitigation=None, restore=None,
                             nodes=nodes) == (True, True)
    assert wanted_daemonsets(mitigating=False, labelled=True, mitigation=mitigation,
                             restore=done, nodes=nodes) == (True, True)
    # Nothing wanted: the mitigation DaemonSet goes first; the restore one stays while the
    # other still exists, and until it has confirmed the restore.
    assert wanted_daemonsets(mitigating=False, labelled=False, mitigation=mitigation,
                             restore=done, nodes=nodes) == (False, True)
    assert wanted_daemonsets(mitigating=False, labelled=False, mitigation=None, restore=busy,
                             nodes=nodes) == (False, True)
    assert wanted_daemonsets(mitigating=False, labelled=False, mitigation=None, restore=done,
                             nodes=nodes) == (False, False)
    assert wanted_daemonsets(mitigating=False, labelled=False, mitigation=None, restore=None,
                             nodes=nodes) == (False, False)
