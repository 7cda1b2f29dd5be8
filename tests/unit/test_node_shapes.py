"""The operator benchmark's node shapes: realistic nodes are as big and as varied as the cloud
node they model (benchmarks/node_shapes.py), thin ones are the harness's."""

from __future__ import annotations

import json

import pytest
from benchmarks.node_shapes import create_path, node

from devtools.cluster.harness import KWOK_ANNOTATION, node_manifest

INFO = {"kernelVersion": "6.12.90", "bootID": "boot-1"}


def make(shape: str, index: int = 7) -> dict:
    return node(shape, f"bench-{index:05d}", index, kubelet_port=10250,
                kubelet_version="v1.36.3", labels={"thpcheck-bench": "1"}, node_info=INFO)


def test_a_realistic_node_has_a_real_nodes_size_and_parts() -> None:
    body = make("realistic")
    size = len(json.dumps(body, separators=(",", ":")))
    assert 20_000 < size < 40_000, size
    meta, status = body["metadata"], body["status"]
    assert 30 <= len(meta["labels"]) <= 40
    assert meta["labels"]["thpcheck-bench"] == "1"
    assert meta["annotations"][KWOK_ANNOTATION[0]] == KWOK_ANNOTATION[1]  # kwok manages it
    csi = json.loads(meta["annotations"]["csi.volume.kubernetes.io/nodeid"])
    assert set(csi) == {"pd.csi.storage.gke.io"}
    assert len(status["images"]) == 50  # the kubelet's nodeStatusMaxImages
    assert all(len(image["names"]) == 2 for image in status["images"])
    # kwok adds the kubelet's four conditions (Ready among them): 12 in all.
    assert len(status["conditions"]) == 8
    assert "Ready" not in {c["type"] for c in status["conditions"]}
    assert len(status["volumesInUse"]) == len(status["volumesAttached"]) == 8
    managers = {(m["manager"], m.get("subresource")) for m in meta["managedFields"]}
    assert len(managers) == 4 and all(sub == "status" for _, sub in managers)
    assert status["nodeInfo"]["kernelVersion"] == "6.12.90"  # this machine's, for the agent
    assert create_path("realistic").endswith("fieldManager=kubelet")


def test_realistic_nodes_are_deterministic_and_vary_by_index() -> None:
    assert make("realistic") == make("realistic")
    a, b = make("realistic", 1), make("realistic", 2)
    assert a["metadata"]["labels"]["topology.kubernetes.io/zone"] != \
        b["metadata"]["labels"]["topology.kubernetes.io/zone"]
    assert a["spec"]["podCIDR"] != b["spec"]["podCIDR"]


def test_thin_nodes_are_the_harness_nodes() -> None:
    assert make("thin") == node_manifest("bench-00007", kubelet_port=10250,
                                         kubelet_version="v1.36.3",
                                         labels={"thpcheck-bench": "1"}, node_info=INFO)
    assert create_path("thin") == "/api/v1/nodes"
    with pytest.raises(ValueError, match="unknown node shape 'huge'"):
        make("huge")
