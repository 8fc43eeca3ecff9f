"""The bundle manifest: what a model version is, file by file. Shared by the control plane (which writes and
signs it) and the agent (which verifies it). Parsing is strict: a manifest the agent cannot fully understand
is refused, never half-used.
"""
from __future__ import annotations

import hashlib
import pathlib
import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field

from slmops import canonical
from slmops.chat_format import CHATML
from slmops.errors import ArtifactInvalid

SCHEMA = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Files are cut into fixed-size, content-addressed chunks: two versions that share bytes (the same base under a
# new adapter, an unchanged tokenizer) share chunks, so publishing and fetching move only what is new. A file no
# larger than one chunk is its own chunk (no list). 4 MiB keeps a SmolLM2 int8 model at ~45 chunks.
DEFAULT_CHUNK_BYTES = 4 << 20
MAX_CHUNK_BYTES = 64 << 20   # the most an agent buffers for one chunk: a bound on what a server can send
# Names the agent writes beside a version's files in models/<name>/<version> (installer.py): a listed file of that
# name would replace the signed manifest (a hard link into the blob cache) or the base's manifest.
RESERVED_PATHS = ("manifest.json", "base.json")
MAX_PATH_CHARS = 1024
MAX_PART_CHARS = 255
MAX_FILES = 10_000
_FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")   # NUL and other controls, bidi overrides, lone surrogates


def check_path(path) -> None:
    """The one rule for a file path in a manifest (both sides): a relative, normalized POSIX path of ordinary
    names, no `.`/`..`/empty parts, no NUL, control characters or backslashes, no reserved name (any case)."""
    if not isinstance(path, str) or not path:
        raise ArtifactInvalid(f"file path {path!r} must be a non-empty relative path")
    if len(path) > MAX_PATH_CHARS:
        raise ArtifactInvalid(f"file path {path[:40]!r}… is longer than {MAX_PATH_CHARS} characters")
    bad = next((c for c in path if c == "\\" or unicodedata.category(c) in _FORBIDDEN_CATEGORIES), None)
    if bad is not None:
        raise ArtifactInvalid(f"file path {path!r} holds a forbidden character {bad!r} (NUL, control, format, "
                              "surrogate, line separator or backslash)")
    if path.startswith("/"):
        raise ArtifactInvalid(f"file path {path!r} must be relative and stay inside the bundle")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ArtifactInvalid(f"file path {path!r} must be relative and normalized (no empty, '.' or '..' "
                                  "parts) and stay inside the bundle")
        if len(part) > MAX_PART_CHARS:
            raise ArtifactInvalid(f"file path {path!r} has a part longer than {MAX_PART_CHARS} characters")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ArtifactInvalid(f"file path {path!r} is not valid UTF-8 text: {e}") from None
    if path.casefold() in RESERVED_PATHS:
        raise ArtifactInvalid(f"file path {path!r} is reserved: the agent writes {', '.join(RESERVED_PATHS)} "
                              "beside a version's files")


def check_paths(paths) -> None:
    """check_path for each, plus: no path listed twice and no file that is also a folder of another file
    (`a` and `a/b`), compared without case so a case-insensitive file system cannot merge two of them."""
    paths = list(paths)
    if len(paths) > MAX_FILES:
        raise ArtifactInvalid(f"manifest lists {len(paths)} files; at most {MAX_FILES}")
    seen: dict[str, str] = {}
    for p in paths:
        check_path(p)
        key = p.casefold()
        if key in seen:
            raise ArtifactInvalid(f"file {p!r} is listed twice" + ("" if seen[key] == p else f" (as {seen[key]!r})"))
        seen[key] = p
    for p in paths:
        parts = p.casefold().split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in seen:
                raise ArtifactInvalid(f"file {seen[folder]!r} is also a folder of {p!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int
    # ((sha256, size), ...) in file order; empty when the file is a single chunk.
    chunks: tuple = ()

    def chunk_spans(self) -> list[tuple[str, int, int]]:
        """(sha256, offset, size) of each chunk; a file without a list is one span."""
        if not self.chunks:
            return [(self.sha256, 0, self.size)]
        spans, offset = [], 0
        for sha, size in self.chunks:
            spans.append((sha, offset, size))
            offset += size
        return spans

    def to_dict(self) -> dict:
        d = {"path": self.path, "sha256": self.sha256, "size": self.size}
        if self.chunks:
            d["chunks"] = [[sha, size] for sha, size in self.chunks]
        return d

    @classmethod
    def from_dict(cls, f: dict) -> FileEntry:
        if not isinstance(f, dict):
            raise ArtifactInvalid(f"file entry {f!r} must be an object")
        unknown = set(f) - {"path", "sha256", "size", "chunks"}
        if unknown:
            raise ArtifactInvalid(f"file entry {f.get('path')!r} has unknown fields: {', '.join(sorted(unknown))}")
        chunks = f.get("chunks", ())
        if not isinstance(chunks, (list, tuple)) or not all(
                isinstance(c, (list, tuple)) and len(c) == 2 for c in chunks):
            raise ArtifactInvalid(f"file {f.get('path')!r}: chunks must be a list of [sha256, size] pairs")
        if not isinstance(f.get("path"), str) or not isinstance(f.get("sha256"), str) or not _is_int(f.get("size")):
            raise ArtifactInvalid(f"file entry {str(f)[:80]!r} needs a string path, a string sha256 and an integer size")
        if not all(isinstance(sha, str) and _is_int(size) for sha, size in chunks):
            raise ArtifactInvalid(f"file {f['path']!r}: each chunk is [sha256 string, integer size]")
        return cls(f["path"], f["sha256"], f["size"], tuple((sha, size) for sha, size in chunks))

    def validate(self) -> None:
        if not _SHA.match(self.sha256):
            raise ArtifactInvalid(f"file {self.path!r} has a malformed sha256")
        if self.size < 0:
            raise ArtifactInvalid(f"file {self.path!r} has a negative size")
        if not self.chunks:
            if self.size > MAX_CHUNK_BYTES:
                raise ArtifactInvalid(f"file {self.path!r} is {self.size} bytes without a chunk list "
                                      f"(at most {MAX_CHUNK_BYTES} bytes may travel as one chunk)")
            return
        for i, (sha, size) in enumerate(self.chunks):
            if not _SHA.match(sha):
                raise ArtifactInvalid(f"file {self.path!r} chunk {i} has a malformed sha256")
            if not 0 < size <= MAX_CHUNK_BYTES:
                raise ArtifactInvalid(f"file {self.path!r} chunk {i} has size {size}; chunks hold 1 to "
                                      f"{MAX_CHUNK_BYTES} bytes")
        total = sum(size for _, size in self.chunks)
        if total != self.size:
            raise ArtifactInvalid(f"file {self.path!r}: its chunks add up to {total} bytes, the file has {self.size}")


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
        d["files"] = [f.to_dict() for f in self.files]
        d["golden_prompts"] = list(self.golden_prompts)
        # Left out when empty, so a manifest without adapters keeps its bytes and older agents still parse it.
        for optional in ("adapters", "base"):
            if not d[optional]:
                del d[optional]
            elif optional == "adapters":
                d["adapters"] = [dict(a) for a in self.adapters]
        return canonical.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        import json

        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError, TypeError) as e:
            raise ArtifactInvalid(f"manifest is not valid JSON: {e}") from e
        except RecursionError:
            raise ArtifactInvalid("manifest JSON is nested too deeply") from None
        if not isinstance(d, dict):
            raise ArtifactInvalid("manifest must be a JSON object")
        if d.get("schema") != SCHEMA:
            raise ArtifactInvalid(f"manifest schema {d.get('schema')!r} is not supported (expected {SCHEMA})")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ArtifactInvalid(f"manifest has unknown fields: {', '.join(sorted(unknown))}")
        try:
            files = tuple(FileEntry.from_dict(f) for f in d.pop("files"))
            adapters = tuple(dict(a) for a in d.pop("adapters", ()))
            m = cls(files=files, golden_prompts=tuple(d.pop("golden_prompts", ())), adapters=adapters, **d)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactInvalid(f"manifest is missing or has a malformed field: {e}") from e
        m.validate()
        return m

    def validate(self) -> None:
        for what in ("name", "version", "precision", "execution_provider", "hardware_class", "min_agent_version"):
            if not isinstance(getattr(self, what), str):
                raise ArtifactInvalid(f"manifest field {what!r} must be a string")
        for what in ("generation", "chat_format", "metrics", "base"):
            if not isinstance(getattr(self, what), dict):
                raise ArtifactInvalid(f"manifest field {what!r} must be an object")
        if not _is_int(self.created_unix_ms):
            raise ArtifactInvalid("manifest field 'created_unix_ms' must be an integer")
        if not all(isinstance(f, FileEntry) for f in self.files):
            raise ArtifactInvalid("manifest files must be file entries")
        for i, gp in enumerate(self.golden_prompts):
            if not isinstance(gp, dict) or not isinstance(gp.get("messages"), list) or not all(
                    isinstance(msg, dict) for msg in gp["messages"]):
                raise ArtifactInvalid(f"golden prompt {i} must be an object with a list of message objects")
        if not _NAME.match(self.name):
            raise ArtifactInvalid(f"model name {self.name!r} must match {_NAME.pattern}")
        if not _NAME.match(self.version):
            raise ArtifactInvalid(f"version {self.version!r} must match {_NAME.pattern}")
        if self.precision not in PRECISIONS:
            raise ArtifactInvalid(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not self.files:
            raise ArtifactInvalid("manifest lists no files")
        check_paths([f.path for f in self.files])
        seen = {f.path for f in self.files}
        for f in self.files:
            f.validate()
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


def file_entry(path: pathlib.Path, rel: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FileEntry:
    """One pass over the file: its sha256, and the sha256 of each chunk when it is larger than one chunk."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ArtifactInvalid(f"chunk size {chunk_bytes} must be between 1 and {MAX_CHUNK_BYTES} bytes")
    whole, chunks, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        while data := f.read(chunk_bytes):
            whole.update(data)
            chunks.append((hashlib.sha256(data).hexdigest(), len(data)))
            size += len(data)
    return FileEntry(rel, whole.hexdigest(), size, tuple(chunks) if len(chunks) > 1 else ())


def manifest_for_dir(model_dir: pathlib.Path, name: str, version: str, precision: str,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, **extra) -> Manifest:
    """Describes an exported ONNX folder: every file with its sha256, size and chunks."""
    model_dir = pathlib.Path(model_dir)
    files = tuple(file_entry(p, str(p.relative_to(model_dir).as_posix()), chunk_bytes)
                  for p in sorted(model_dir.rglob("*")) if p.is_file() and p.name != "manifest.json")
    m = Manifest(name=name, version=version, precision=precision, files=files,
                 created_unix_ms=int(time.time() * 1000), **extra)
    m.validate()
    return m


def combine(base: Manifest, bundle: Manifest) -> Manifest:
    """The model an adapter-only bundle makes on top of its base: the base's files plus the bundle's (adapter)
    files, the adapters of both, the bundle's name, version, generation defaults and golden prompts. Refuses a
    bundle that does not fit the base it names."""
    if not bundle.base:
        return bundle
    if (base.name, base.version) != (bundle.base["name"], bundle.base["version"]):
        raise ArtifactInvalid(f"{bundle.ref} needs base {bundle.base['name']}@{bundle.base['version']}, "
                              f"not {base.ref}")
    if base.base:
        raise ArtifactInvalid(f"{bundle.ref}: its base {base.ref} is itself adapter-only; a base must be a full model")
    for what in ("precision", "execution_provider", "hardware_class"):
        if getattr(base, what) != getattr(bundle, what):
            raise ArtifactInvalid(f"{bundle.ref} was built for {what} {getattr(bundle, what)!r} but its base "
                                  f"{base.ref} has {getattr(base, what)!r}")
    files = {f.path: f for f in base.files}
    for f in bundle.files:
        if f.path in files and files[f.path].sha256 != f.sha256:
            raise ArtifactInvalid(f"{bundle.ref} file {f.path!r} would replace the base's file of that name")
        files[f.path] = f
    names = [a["name"] for a in base.adapters + bundle.adapters]
    if len(set(names)) != len(names):
        raise ArtifactInvalid(f"{bundle.ref} reuses an adapter name of its base {base.ref}: {', '.join(names)}")
    m = Manifest(name=bundle.name, version=bundle.version, precision=bundle.precision,
                 files=tuple(files.values()), execution_provider=bundle.execution_provider,
                 hardware_class=bundle.hardware_class, generation=bundle.generation,
                 chat_format=bundle.chat_format, golden_prompts=bundle.golden_prompts or base.golden_prompts,
                 metrics=bundle.metrics, min_agent_version=bundle.min_agent_version,
                 created_unix_ms=bundle.created_unix_ms, adapters=base.adapters + bundle.adapters)
    m.validate()
    return m
