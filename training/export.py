"""ONNX export and quantization through the onnxruntime-genai model builder, called in-process.

The builder reads a local Hugging Face folder (no hub) and writes model.onnx, model.onnx.data,
genai_config.json and the tokenizer files. Precision options: fp32, fp16, int8, int4 (block size,
symmetric, accuracy level).
"""
from __future__ import annotations

import contextlib
import io
import pathlib
import shutil
import tempfile
from dataclasses import dataclass, field

PRECISIONS = ("fp32", "fp16", "int8", "int4")
PROVIDERS = ("cpu", "cuda", "dml")


class ExportError(Exception):
    """The model could not be exported (unsupported architecture, precision, missing files)."""


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "int4"
    execution_provider: str = "cpu"
    int4_block_size: int = 32
    int4_symmetric: bool = True
    int4_accuracy_level: int = 4
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"unsupported precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.execution_provider not in PROVIDERS:
            raise ExportError(f"unsupported execution provider {self.execution_provider!r}; "
                              f"choose one of {', '.join(PROVIDERS)}")
        if self.int4_block_size not in (16, 32, 64, 128, 256):
            raise ExportError(f"int4 block size {self.int4_block_size} must be one of 16, 32, 64, 128, 256")

    def builder_options(self) -> list[str]:
        opts = {}
        if self.precision == "int4":
            opts.update(int4_block_size=self.int4_block_size, int4_accuracy_level=self.int4_accuracy_level,
                        int4_is_symmetric=str(self.int4_symmetric).lower())
        opts.update(self.extra)
        return [f"{k}={v}" for k, v in opts.items()]


def export_onnx(model_dir: pathlib.Path, out_dir: pathlib.Path, options: ExportOptions = ExportOptions(),
                log=print) -> pathlib.Path:
    """Exports `model_dir` (HF folder) to `out_dir`. Nothing half-written is left: the build happens in a
    temporary folder next to `out_dir`, which is renamed into place only when complete."""
    model_dir = pathlib.Path(model_dir)
    out_dir = pathlib.Path(out_dir)
    if not (model_dir / "config.json").exists():
        raise ExportError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    if not (model_dir / "tokenizer.json").exists():
        raise ExportError(f"{model_dir} has no tokenizer.json; the device needs it to tokenize")
    if out_dir.exists():
        raise ExportError(f"{out_dir} already exists; refusing to overwrite an export")
    from onnxruntime_genai.models import builder

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    cache = pathlib.Path(tempfile.mkdtemp(prefix="slmops-builder-cache-"))
    chatter = io.StringIO()
    import logging

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            kv = builder.parse_extra_options(None, str(model_dir), str(staging), options.precision,
                                             options.execution_provider, str(cache), options.builder_options())
            builder.create_model(None, str(model_dir), str(staging), options.precision,
                                 options.execution_provider, str(cache), **kv)
        import json

        (staging / "export_info.json").write_text(json.dumps(
            {"precision": options.precision, "execution_provider": options.execution_provider,
             "builder_options": options.builder_options(), "source": str(model_dir)}, indent=1))
        missing = [n for n in ("model.onnx", "genai_config.json", "tokenizer.json") if not (staging / n).exists()]
        if missing:
            raise ExportError(f"builder finished without {', '.join(missing)}: {chatter.getvalue()[-500:]}")
        staging.rename(out_dir)
    except ExportError:
        raise
    except NotImplementedError as e:
        raise ExportError(f"unsupported architecture in {model_dir}: {e}") from e
    except Exception as e:  # the builder raises bare Exceptions; map them once here
        raise ExportError(f"export of {model_dir} to {options.precision} failed: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    log(f"  exported {options.precision} to {out_dir} ({dir_size(out_dir) / 1e6:.2f} MB)")
    return out_dir


def dir_size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())
