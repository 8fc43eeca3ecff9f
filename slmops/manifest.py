"""The bundle manifest: what a model version is, file by file. Shared by the control plane (which writes and
signs it) and the agent (which verifies it). Parsing is strict: a manifest the agent cannot fully understand
is refused, never half-used.
"""
from __future__ import annotations

import hashlib
import pathlib
import re
import time
from dataclasses import asdict, dataclass, field

from slmops import canonical
from slmops.chat_format import CHATML
from slmops.errors import ArtifactInvalid

SCHEMA = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    precision: str
    files: tuple[FileEntry, ...]
    execution_provider: str = "cpu"
    hardware_class: str = "cpu"
    generation: dict = field(default_factory=lambda: {"max_tokens": 128, "temperature": 0.0, "top_p": 1.0,
                                                      "top_k": 50, "repetition_penalty": 1.0})
    chat_format: dict = field(default_factory=lambda: dict(CHATML))
    golden_prompts: tuple = ()
    metrics: dict = field(default_factory=dict)
    min_agent_version: str = "0.1.0"
    created_unix_ms: int = 0
    schema: int = SCHEMA
    # Runtime LoRA adapters shipped in this bundle: ({"name", "path", "version"}, ...), served as BASE:NAME.
    adapters: tuple = ()
    # For an adapter-only bundle: the base it needs installed ({"name", "version"}); empty for a full model.
    base: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        d = asdict(self)
        d["files"] = [asdict(f) for f in self.files]
        d["golden_prompts"] = list(self.golden_prompts)
        # Left out when empty, so a manifest without adapters keeps its bytes and older agents still parse it.
        for optional in ("adapters", "base"):
            if not d[optional]:
                del d[optional]
            elif optional == "adapters":
                d["adapters"] = [dict(a) for a in self.adapters]
        return canonical.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes) -> "Manifest":
        import json

        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ArtifactInvalid(f"manifest is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ArtifactInvalid("manifest must be a JSON object")
        if d.get("schema") != SCHEMA:
            raise ArtifactInvalid(f"manifest schema {d.get('schema')!r} is not supported (expected {SCHEMA})")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ArtifactInvalid(f"manifest has unknown fields: {', '.join(sorted(unknown))}")
        try:
            files = tuple(FileEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in d.pop("files"))
            adapters = tuple(dict(a) for a in d.pop("adapters", ()))
            m = cls(files=files, golden_prompts=tuple(d.pop("golden_prompts", ())), adapters=adapters, **d)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactInvalid(f"manifest is missing or has a malformed field: {e}") from e
        m.validate()
        return m

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ArtifactInvalid(f"model name {self.name!r} must match {_NAME.pattern}")
        if not _NAME.match(self.version):
            raise ArtifactInvalid(f"version {self.version!r} must match {_NAME.pattern}")
        if self.precision not in PRECISIONS:
            raise ArtifactInvalid(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not self.files:
            raise ArtifactInvalid("manifest lists no files")
        seen = set()
        for f in self.files:
            p = pathlib.PurePosixPath(f.path)
            if p.is_absolute() or ".." in p.parts or f.path != str(p) or not f.path:
                raise ArtifactInvalid(f"file path {f.path!r} must be relative and stay inside the bundle")
            if f.path in seen:
                raise ArtifactInvalid(f"file {f.path!r} is listed twice")
            seen.add(f.path)
            if not _SHA.match(f.sha256):
                raise ArtifactInvalid(f"file {f.path!r} has a malformed sha256")
            if f.size < 0:
                raise ArtifactInvalid(f"file {f.path!r} has a negative size")
        self._validate_adapters(seen)
        if self.base:
            return  # an adapter-only bundle: the model files come from the base it names
        for needed in ("genai_config.json", "tokenizer.json"):
            if needed not in seen:
                raise ArtifactInvalid(f"bundle has no {needed}")

    def _validate_adapters(self, paths: set) -> None:
        names = set()
        for a in self.adapters:
            if not isinstance(a, dict) or set(a) != {"name", "path", "version"}:
                raise ArtifactInvalid(f"adapter entry {a!r} must have exactly name, path and version")
            if not isinstance(a["name"], str) or not _NAME.match(a["name"]) or a["name"] in names:
                raise ArtifactInvalid(f"adapter name {a['name']!r} must match {_NAME.pattern} and be unique")
            names.add(a["name"])
            if a["path"] not in paths:
                raise ArtifactInvalid(f"adapter {a['name']!r} file {a['path']!r} is not among the bundle's files")
            if not isinstance(a["version"], str) or not _NAME.match(a["version"]):
                raise ArtifactInvalid(f"adapter {a['name']!r} version {a['version']!r} must match {_NAME.pattern}")
        if self.base:
            if set(self.base) != {"name", "version"} or not all(
                    isinstance(v, str) and _NAME.match(v) for v in self.base.values()):
                raise ArtifactInvalid(f"base {self.base!r} must be {{name, version}} of an installed model")
            if not self.adapters:
                raise ArtifactInvalid("a bundle that names a base must carry at least one adapter")


def sha256_file(path: pathlib.Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def manifest_for_dir(model_dir: pathlib.Path, name: str, version: str, precision: str, **extra) -> Manifest:
    """Describes an exported ONNX folder: every file with its sha256 and size."""
    model_dir = pathlib.Path(model_dir)
    files = tuple(FileEntry(str(p.relative_to(model_dir).as_posix()), sha256_file(p), p.stat().st_size)
                  for p in sorted(model_dir.rglob("*")) if p.is_file() and p.name != "manifest.json")
    m = Manifest(name=name, version=version, precision=precision, files=files,
                 created_unix_ms=int(time.time() * 1000), **extra)
    m.validate()
    return m
