import dataclasses

import pytest

from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid
from slmops.manifest import FileEntry, Manifest, manifest_for_dir

SHA = "a" * 64


def manifest(**kw) -> Manifest:
    base = {"name": "m", "version": "v1", "precision": "int4",
                "files": (FileEntry("genai_config.json", SHA, 10), FileEntry("tokenizer.json", SHA, 5))}
    base.update(kw)
    return Manifest(**base)


@pytest.mark.parametrize("path", ["../evil", "/etc/passwd", "a/../../b", ""])
def test_paths_must_stay_inside_the_bundle(path):
    m = manifest(files=(FileEntry(path, SHA, 1), FileEntry("genai_config.json", SHA, 1),
                        FileEntry("tokenizer.json", SHA, 1)))
    with pytest.raises(ArtifactInvalid, match="relative"):
        m.validate()


@pytest.mark.parametrize("change,match", [
    ({"precision": "int3"}, "precision"), ({"name": "bad name"}, "model name"),
    ({"files": (FileEntry("genai_config.json", SHA, 1),)}, "tokenizer.json"),
    ({"files": (FileEntry("genai_config.json", "xyz", 1), FileEntry("tokenizer.json", SHA, 1))}, "sha256"),
])
def test_invalid_manifests_name_the_problem(change, match):
    with pytest.raises(ArtifactInvalid, match=match):
        manifest(**change).validate()


def test_unknown_fields_and_bad_json_are_refused():
    with pytest.raises(ArtifactInvalid, match="unknown fields: surprise"):
        Manifest.from_json(manifest().to_json()[:-1] + b',"surprise":1}')
    with pytest.raises(ArtifactInvalid, match="JSON"):
        Manifest.from_json(b"{nope")


def test_check_file_names_size_and_hash_mismatch():
    e = FileEntry("model.onnx", SHA, 10)
    with pytest.raises(ArtifactInvalid, match="11 bytes"):
        check_file(e, SHA, 11)
    with pytest.raises(ArtifactInvalid, match="does not match"):
        check_file(e, "b" * 64, 10)
    check_file(e, SHA, 10)


def test_manifest_for_dir_hashes_every_file(tmp_path):
    (tmp_path / "genai_config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.bin").write_bytes(b"12345")
    m = manifest_for_dir(tmp_path, "m", "v1", "int4")
    assert {f.path: f.size for f in m.files} == {"genai_config.json": 2, "sub/x.bin": 5, "tokenizer.json": 2}
    assert Manifest.from_json(m.to_json()) == m
    assert dataclasses.replace(m, version="v2") != m


def with_paths(*paths) -> Manifest:
    return manifest(files=tuple(FileEntry(p, SHA, 1) for p in paths) + (
        FileEntry("genai_config.json", SHA, 1), FileEntry("tokenizer.json", SHA, 1)))


@pytest.mark.parametrize("path,match", [
    (".", "normalized"), ("./model.onnx", "normalized"), ("a/./b", "normalized"), ("a//b", "normalized"),
    ("a/", "normalized"), ("a/..", "normalized"), ("manifest.json", "reserved"), ("base.json", "reserved"),
    ("MANIFEST.JSON", "reserved"), ("model\x00.onnx", "forbidden character"), ("a\nb", "forbidden character"),
    ("a\\..\\b", "forbidden character"), ("evil\u202etxt.onnx", "forbidden character"),
    ("x" * 256, "longer than 255"), ("/abs", "relative"),
])
def test_manifest_path_rule_refuses(path, match):
    with pytest.raises(ArtifactInvalid, match=match):
        with_paths(path).validate()


def test_manifest_file_that_is_also_a_folder_is_refused():
    with pytest.raises(ArtifactInvalid, match="also a folder"):
        with_paths("a", "a/b").validate()
    with pytest.raises(ArtifactInvalid, match="also a folder"):
        with_paths("x/y/z", "X/Y").validate()
    with pytest.raises(ArtifactInvalid, match="listed twice"):
        with_paths("Model.onnx", "model.onnx").validate()
    with_paths("a/b", "a/c", "ab").validate()   # siblings and a shared prefix that is not a folder are fine


def test_manifest_fields_of_the_wrong_type_are_refused_not_coerced():
    raw = manifest().to_json()
    for old, new, match in [(b'"size":10', b'"size":"10"', "integer size"), (b'"size":10', b'"size":true',
                                                                            "integer size"),
                            (b'"path":"tokenizer.json"', b'"path":7', "string path"),
                            (b'"name":"m"', b'"name":["m"]', "must be a string"),
                            (b'"golden_prompts":[]', b'"golden_prompts":[3]', "golden prompt 0")]:
        assert old in raw, old
        with pytest.raises(ArtifactInvalid, match=match):
            Manifest.from_json(raw.replace(old, new, 1))
    with pytest.raises(ArtifactInvalid, match="nested too deeply"):
        Manifest.from_json(b"[" * 100_000 + b"]" * 100_000)
