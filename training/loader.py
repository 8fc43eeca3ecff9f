"""One way to load a base model for training: a local HF folder, a GGUF file, SmolLM2 from its wheel, or a tiny
config. GGUF and tiny sources are materialised once as HF folders in a cache folder, then loaded like any other.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import tempfile
from dataclasses import dataclass, field

from training.model_sources import ModelSourceError, gguf_to_hf, smollm2_gguf_path

SOURCES = ("hf", "gguf", "smollm2", "tiny")
# Training code here is written against decoder-only models whose layers live in model.model.layers.
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "smollm3")


@dataclass(frozen=True)
class ModelSpec:
    source: str = "hf"
    path: str | None = None  # hf: the folder; gguf: the .gguf file
    tiny: dict = field(default_factory=dict)  # tiny: TinyConfig fields plus optional "steps"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ModelSourceError(f"unknown model source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.source in ("hf", "gguf") and not self.path:
            raise ModelSourceError(f"model source {self.source!r} needs a path")

    @classmethod
    def from_dict(cls, d: dict | str) -> ModelSpec:
        """Accepts {source, path, tiny} or a bare string: 'smollm2', 'tiny', a folder or a .gguf path."""
        if isinstance(d, str):
            if d in ("smollm2", "tiny"):
                return cls(source=d)
            return cls(source="gguf" if d.endswith(".gguf") else "hf", path=d)
        unknown = set(d) - {"source", "path", "tiny"}
        if unknown:
            raise ModelSourceError(f"unknown model field(s) {sorted(unknown)}; expected source, path, tiny")
        return cls(source=d.get("source", "hf"), path=d.get("path"), tiny=dict(d.get("tiny") or {}))

    def describe(self) -> str:
        return {"hf": f"hf:{self.path}", "gguf": f"gguf:{self.path}", "smollm2": "smollm2-135m-instruct (gguf wheel)",
                "tiny": f"tiny:{json.dumps(self.tiny, sort_keys=True)}"}[self.source]


def materialise(spec: ModelSpec, cache_dir: pathlib.Path) -> pathlib.Path:
    """The HF folder for `spec`, converting or building it into cache_dir when needed."""
    cache_dir = pathlib.Path(cache_dir)
    if spec.source == "hf":
        folder = pathlib.Path(spec.path)
        if not folder.is_dir():
            raise ModelSourceError(f"no model folder at {folder}")
        if not (folder / "config.json").exists():
            raise ModelSourceError(f"{folder} is not a Hugging Face model folder (no config.json)")
        return folder
    if spec.source == "gguf":
        gguf = pathlib.Path(spec.path)
        if gguf.suffix != ".gguf":
            raise ModelSourceError(f"{gguf} is not a .gguf file")
        return gguf_to_hf(gguf, cache_dir / f"gguf-{gguf.stem}")
    if spec.source == "smollm2":
        return gguf_to_hf(smollm2_gguf_path(), cache_dir / "smollm2-135m-instruct")
    from training.tiny import TinyConfig, build_tiny_model

    opts = dict(spec.tiny)
    steps = int(opts.pop("steps", 60))
    try:
        cfg = TinyConfig(**opts)
    except (TypeError, ValueError) as e:
        raise ModelSourceError(f"bad tiny config {spec.tiny}: {e}") from e
    key = hashlib.sha256(json.dumps(spec.tiny, sort_keys=True).encode()).hexdigest()[:12]
    out = cache_dir / f"tiny-{key}"
    if not (out / "config.json").exists():
        # built aside and renamed: processes started together by torchrun may race to build the same model
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=cache_dir))
        try:
            build_tiny_model(staging, cfg, steps=steps, log=lambda m: None)
            if not (staging / "config.json").exists():  # e.g. save_pretrained skips non-main DDP ranks
                raise ModelSourceError(f"building the tiny model left no config.json in {staging}")
            staging.rename(out)
        except OSError:
            if not (out / "config.json").exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def load_model(spec: ModelSpec | str | dict, cache_dir: pathlib.Path | str = "runs/.cache"):
    """(model, tokenizer, folder). Errors name the model and the reason; nothing is fetched from a hub."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_dict(spec)
    folder = materialise(spec, pathlib.Path(cache_dir))
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelSourceError(f"cannot read the config of {folder}: {e}") from e
    if config.model_type not in SUPPORTED_TYPES:
        raise ModelSourceError(f"{folder}: model type {config.model_type!r} is not supported for training "
                               f"(supported: {', '.join(SUPPORTED_TYPES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelSourceError(f"cannot load {folder}: {e}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked, any id will do
    return model, tokenizer, folder
