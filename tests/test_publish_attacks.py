"""Manifests with bad file paths sent to a real control plane's Admin.PublishModel (every blob uploaded, so only
the path rule can refuse them): each is refused with a message naming the problem, nothing is published, and
an agent serving the previous version keeps answering. The same rule (slmops.manifest.check_paths) refuses
them on the agent when a control plane signs one anyway (tests/test_reconciler_faults.py)."""
from __future__ import annotations

import hashlib
import json

import pytest

from control_plane.admin_client import AdminError
from slmops.v1 import admin_pb2
from tests.conftest import serving_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site(tiny_int4, tmp_path_factory):
    with serving_cluster(tmp_path_factory.mktemp("publish-attacks"), tiny_int4) as pair:
        yield pair


def publish_raw(c, m1, version: str, extra_files: list[dict]):
    d = json.loads(m1.to_json())
    d["version"] = version
    d["files"] = d["files"] + extra_files
    return c.admin._call(c.admin.stub.PublishModel, admin_pb2.PublishRequest(manifest_json=json.dumps(d).encode()))


@pytest.mark.parametrize("paths,words", [
    (["."], "normalized"), (["./model.onnx"], "normalized"), (["sub/../x"], "normalized"),
    (["manifest.json"], "reserved"), (["base.json"], "reserved"), (["Manifest.JSON"], "reserved"),
    (["model\x00.onnx"], "forbidden character"), (["a", "a/b"], "also a folder"),
    (["../escape"], "normalized"), (["/etc/passwd"], "relative"),
], ids=["dot", "dot-slash", "dotdot-inside", "manifest.json", "base.json", "case", "nul", "file-and-folder",
        "dotdot", "absolute"])
def test_publish_refuses_manifest_path(site, paths, words):
    c, m1 = site
    data = b"attacker bytes"
    sha = hashlib.sha256(data).hexdigest()
    c.admin.upload_bytes(data, sha)   # the blob is there: only the path can be refused
    with pytest.raises(AdminError) as e:
        publish_raw(c, m1, "v-bad", [{"path": p, "sha256": sha, "size": len(data)} for p in paths])
    assert words in str(e.value)
    assert "v-bad" not in {m.model.version for m in c.admin.models()}
    status, body = c.chat("a1", max_tokens=4)
    assert status == 200 and body["model"] == m1.ref
