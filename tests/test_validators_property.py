"""Property tests: random manifests, bundles and request bodies through the pure validators give a value or an
error of the project's tree (slmops/errors.py), never anything else (no KeyError, TypeError, RecursionError)."""
from __future__ import annotations

import io
import json
import pathlib
import tarfile
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import bundle
from edge_agent.openai_schema import parse_chat, parse_completion, parse_json_body
from slmops.errors import ArtifactInvalid, RequestInvalid
from slmops.manifest import FileEntry, Manifest, check_paths

SHA = "a" * 64
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)  # the same examples every run (CI is reproducible); raise max_examples to explore
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                      max_size=4), max_leaves=20)
path_text = st.lists(st.sampled_from(list("ab./\\\x00\n") + ["manifest.json", "Base.JSON", "..", "é", "\u202e",
                                                                 "\ud800"]), max_size=8).map("".join)


def valid_manifest_dict() -> dict:
    m = Manifest(name="m", version="v1", precision="int4",
                 files=(FileEntry("genai_config.json", SHA, 1), FileEntry("tokenizer.json", SHA, 1)))
    return json.loads(m.to_json())


@FAST
@given(st.lists(path_text, max_size=6))
def test_check_paths_refuses_cleanly_or_accepts_only_safe_paths(paths):
    try:
        check_paths(paths)
    except ArtifactInvalid:
        return
    root = pathlib.Path("/bundle")
    folded = {p.casefold() for p in paths}
    assert len(folded) == len(paths)
    for p in paths:
        assert (root / p).resolve().is_relative_to(root) and p.split("/")[0] not in ("", ".", "..")
        assert p.casefold() not in ("manifest.json", "base.json")
        parts = p.casefold().split("/")
        assert not any("/".join(parts[:i]) in folded for i in range(1, len(parts)))


@FAST
@given(st.dictionaries(st.sampled_from(["name", "version", "precision", "files", "schema", "golden_prompts",
                                        "adapters", "base", "generation", "created_unix_ms", "metrics", "extra"]),
                       json_values, max_size=4),
       st.lists(st.fixed_dictionaries({"path": path_text | json_values, "sha256": st.just(SHA) | json_values,
                                       "size": st.integers(-2, 10) | json_values}), max_size=3))
def test_random_manifests_give_a_manifest_or_artifact_invalid(changes, files):
    d = valid_manifest_dict()
    d.update(changes)
    if files and isinstance(d["files"], list):   # `changes` may have replaced files by any JSON value
        d["files"] = d["files"] + files
    try:
        raw = json.dumps(d).encode()
    except (TypeError, ValueError):
        return
    try:
        m = Manifest.from_json(raw)
    except ArtifactInvalid:
        return
    assert Manifest.from_json(m.to_json()) == m   # what is accepted round-trips


@FAST
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_manifest_bytes(raw):
    try:
        Manifest.from_json(raw)
    except ArtifactInvalid:
        pass


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "x"
                tar.addfile(info)
    return buf.getvalue()


member_names = st.sampled_from(["bundle.json", "metadata/timestamp.json", "metadata/roots/1.root.json",
                                "blobs/" + SHA, "blobs/x", "../evil", "/abs", "./bundle.json", "other"])
bundle_json = (json_values.map(lambda v: json.dumps(v).encode())
               | st.builds(lambda n, v: json.dumps({"format": 1, "name": n, "version": v}).encode(),
                           st.text(max_size=6), st.text(max_size=6)))
members = st.lists(st.tuples(member_names, st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.SYMTYPE,
                                                            tarfile.FIFOTYPE, tarfile.DIRTYPE, tarfile.LNKTYPE]),
                             bundle_json | st.binary(max_size=64)), max_size=5)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(members, st.integers(0, 4096), st.binary(max_size=64))
def test_random_bundles_unpack_or_are_artifact_invalid(members, cut, junk):
    data = _tar(members)
    variants = [data, data[:cut], junk, b"\x1f\x8b" + junk]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for i, raw in enumerate(variants):
            path = tmp / f"b{i}.slmops.tar"
            path.write_bytes(raw)
            try:
                folder, name, version = bundle.unpack(path, tmp / "work")
            except ArtifactInvalid:
                continue
            assert (folder / "bundle.json").is_file() and name and version
            try:
                bundle.read_metadata(folder, 0)
            except ArtifactInvalid:
                pass
            for sha in json.loads((folder / bundle.INDEX).read_text())["blobs"]:
                assert len(b"".join(bundle.read_blob(folder, sha, 0))) >= 0


@FAST
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
       | st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n))
def test_random_request_bodies_parse_or_are_request_invalid(raw):
    try:
        body = parse_json_body(raw)
    except RequestInvalid:
        return
    for parse in (parse_chat, parse_completion):
        try:
            parse(body, 64)
        except RequestInvalid:
            pass


@FAST
@given(st.fixed_dictionaries({}, optional={
    "messages": st.lists(st.fixed_dictionaries({}, optional={"role": json_values | st.sampled_from(
        ["user", "system", "assistant"]), "content": json_values}) | json_values, max_size=3) | json_values,
    "prompt": json_values, "max_tokens": json_values, "temperature": json_values, "top_p": json_values,
    "top_k": json_values, "seed": json_values, "stop": json_values, "stream": json_values, "model": json_values,
    "n": json_values, "tools": json_values}))
def test_random_openai_shaped_requests_parse_or_are_request_invalid(body):
    for parse in (parse_chat, parse_completion):
        try:
            parse(body, 64)
        except RequestInvalid:
            pass
