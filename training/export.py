"""ONNX export and quantization through the onnxruntime-genai model builder, called in-process.

The builder reads a local Hugging Face folder (no hub) and writes model.onnx, model.onnx.data,
genai_config.json and the tokenizer files. Precision options: fp32, fp16, int8, int4 (block size,
symmetric, accuracy level). Execution-provider targets: cpu, cuda, dml (the last two are configs written
on any machine; they run only where that provider exists).

fp16 is refused for the cpu target: with onnxruntime 1.32 / onnxruntime-genai 0.18 the builder's fp16 CPU
graph computes the prompt but fails on the first decode step ("Shape mismatch attempting to re-use buffer"
in a Cast of repeat_kv), so an fp16 CPU model would pass an export check and break on the device.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import pathlib
import shutil
import tempfile
from dataclasses import dataclass, field

PRECISIONS = ("fp32", "fp16", "int8", "int4")
PROVIDERS = ("cpu", "cuda", "dml")
# k_quant_last keeps the last MatMul (lm_head) in int8; k_quant_mixed also the most sensitive layers. hqq is not
# the builder's: an fp32 build (embedding not shared) whose MatMuls onnxruntime's MatMulNBitsQuantizer then
# quantizes with HQQ (asymmetric, float zero points, needs torch; minutes on a 135M model, see _hqq).
# hqq_mixed: the same with the head and llama.cpp's sensitive layers (the builder's mixed_layers) at int8 RTN.
# gguf_exact: an fp32 build whose weights are then replaced by the source GGUF's own 4-/8-bit blocks
# (training/gguf_import.py); only for a folder made from a GGUF whose weights it still has.
INT4_ALGOS = ("default", "rtn", "k_quant", "k_quant_last", "k_quant_mixed", "hqq", "hqq_mixed", "gguf_exact")
# Which precisions a target can actually run (see the module docstring for fp16 on cpu).
RUNNABLE = {"cpu": ("fp32", "int8", "int4"), "cuda": PRECISIONS, "dml": PRECISIONS}
EXPORT_INFO = "export_info.json"


class ExportError(Exception):
    """The model could not be exported (unsupported architecture, precision, missing files)."""


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "int4"
    execution_provider: str = "cpu"
    int4_block_size: int = 32
    int4_symmetric: bool = True
    int4_accuracy_level: int = 4     # 4: int8 activations, fastest on CPU
    int4_algo: str = "default"       # builder algo_config: default/rtn (round to nearest), k_quant*, see INT4_ALGOS
    # 4 = int8 activations. Levels 1-3 keep SmolLM2 within +0.5% perplexity (level 4: +3%) but have no fast CPU
    # kernel: 2-4 tok/s vs 66-90 measured, slower than fp32, so they are opt-in.
    int8_accuracy_level: int = 4
    adapter_path: pathlib.Path | None = None       # a peft LoRA folder: build the graph with LoRA slots
    nodes_to_exclude: tuple[str, ...] = ()          # MatMul nodes kept in float (e.g. the LoRA ones)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"unsupported precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.execution_provider not in PROVIDERS:
            raise ExportError(f"unsupported execution provider {self.execution_provider!r}; "
                              f"choose one of {', '.join(PROVIDERS)}")
        if self.precision not in RUNNABLE[self.execution_provider]:
            raise ExportError(
                f"precision {self.precision} does not run on the {self.execution_provider} execution provider "
                f"(onnxruntime-genai's fp16 CPU graph fails on the first decode step); export fp16 for cuda or "
                f"dml, or use one of {', '.join(RUNNABLE[self.execution_provider])} for cpu")
        if self.int4_block_size not in (16, 32, 64, 128, 256):
            raise ExportError(f"int4 block size {self.int4_block_size} must be one of 16, 32, 64, 128, 256")
        if self.int4_algo not in INT4_ALGOS:
            raise ExportError(f"int4 algorithm {self.int4_algo!r} must be one of {', '.join(INT4_ALGOS)}")
        if self.rebuilt and self.execution_provider != "cpu":
            raise ExportError(f"int4 algorithm {self.int4_algo} is built and measured for the cpu target only")
        for name in ("int4_accuracy_level", "int8_accuracy_level"):
            if getattr(self, name) not in (0, 1, 2, 3, 4):
                raise ExportError(f"{name.replace('_', ' ')} {getattr(self, name)} must be 0-4")

    def builder_options(self) -> list[str]:
        opts: dict = {}
        # onnxruntime-genai 0.18 reads block_size/is_symmetric/accuracy_level; the int4_-prefixed names its
        # help still mentions are silently ignored (measured: int4_block_size=16 still wrote 32-wide blocks).
        if self.hqq:   # the builder makes fp32 with its own embedding; _hqq quantizes the MatMuls after
            opts["shared_embeddings"] = "false"
        elif self.gguf_exact:    # a plain fp32 build; gguf_import replaces its weights
            pass
        elif self.precision == "int4":
            opts.update(block_size=self.int4_block_size, accuracy_level=self.int4_accuracy_level,
                        is_symmetric=str(self.int4_symmetric).lower())
            if self.int4_algo != "default":
                opts["algo_config"] = self.int4_algo
        elif self.precision == "int8":
            opts.update(accuracy_level=self.int8_accuracy_level)
        if self.adapter_path is not None:
            opts["adapter_path"] = str(self.adapter_path)
        if self.nodes_to_exclude:
            opts["nodes_to_exclude"] = ",".join(self.nodes_to_exclude)
        opts.update(self.extra)
        return [f"{k}={v}" for k, v in opts.items()]

    @property
    def hqq(self) -> bool:
        return self.precision == "int4" and self.int4_algo in ("hqq", "hqq_mixed")

    @property
    def gguf_exact(self) -> bool:
        return self.precision == "int4" and self.int4_algo == "gguf_exact"

    @property
    def rebuilt(self) -> bool:
        """Built as fp32 by the builder, then quantized by our own pass (cpu target only)."""
        return self.hqq or self.gguf_exact

    @property
    def builder_precision(self) -> str:
        return "fp32" if self.rebuilt else self.precision

    def describe(self) -> dict:
        out = {"precision": self.precision, "execution_provider": self.execution_provider,
               "builder_options": [o for o in self.builder_options() if not o.startswith("adapter_path=")]}
        if self.hqq:
            out["builder_options"].append(f"then MatMulNBitsQuantizer HQQ 4 bit, block {self.int4_block_size}"
                                          + (", head and mixed layers RTN int8" if self.int4_algo == "hqq_mixed" else "")
                                          + "; embedding GatherBlockQuantized 8 bit (training/q8_embedding.py)")
        if self.gguf_exact:
            out["builder_options"].append(
                f"then the source GGUF's blocks: Q4_1 -> MatMulNBits 4 bit block 32 (accuracy level "
                f"{self.int4_accuracy_level}) + fp32 MatMul of the mins, Q8_0 head -> MatMulNBits 8 bit (level "
                f"{self.int8_accuracy_level}), Q8_0 embedding -> GatherBlockQuantized 8 bit")
        return out


def check_source(model_dir: pathlib.Path) -> str:
    """The architecture of a local HF folder, or ExportError naming what is missing."""
    if not (model_dir / "config.json").exists():
        raise ExportError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    if not (model_dir / "tokenizer.json").exists():
        raise ExportError(f"{model_dir} has no tokenizer.json; the device needs it to tokenize")
    try:
        archs = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    except ValueError as e:
        raise ExportError(f"{model_dir}/config.json is not valid JSON: {e}") from e
    if not archs:
        raise ExportError(f"{model_dir}/config.json names no architecture ('architectures' is empty)")
    if not any((model_dir / n).exists() for n in ("model.safetensors", "model.safetensors.index.json",
                                                  "pytorch_model.bin")):
        raise ExportError(f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)")
    return archs[0]


class _ExpectedGatherNotice(logging.Filter):
    """int8 leaves the embedding (Gather) unquantized by design, yet onnxruntime's quantizer logs that at ERROR
    ("Gather only supports 4 bits quantization."); it is not an error of ours, so it is not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Gather only supports 4 bits" not in record.getMessage()


def export_onnx(model_dir: pathlib.Path, out_dir: pathlib.Path, options: ExportOptions = ExportOptions(),
                log=print) -> pathlib.Path:
    """Exports `model_dir` (HF folder) to `out_dir`. Nothing half-written is left: the build happens in a
    temporary folder next to `out_dir`, which is renamed into place only when complete."""
    model_dir = pathlib.Path(model_dir)
    out_dir = pathlib.Path(out_dir)
    arch = check_source(model_dir)
    if out_dir.exists():
        raise ExportError(f"{out_dir} already exists; refusing to overwrite an export")
    gguf = None
    if options.gguf_exact:   # the GGUF's types and the weights' match are checked before any build
        from training import gguf_import

        gguf = gguf_import.plan(model_dir)
    from onnxruntime_genai.models import builder

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    cache = pathlib.Path(tempfile.mkdtemp(prefix="slmops-builder-cache-"))
    chatter = io.StringIO()
    # The quantizers log every MatMul at INFO; keep the CLI output readable.
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    nbits = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    nbits.setLevel(logging.WARNING)
    if not any(isinstance(f, _ExpectedGatherNotice) for f in nbits.filters):
        nbits.addFilter(_ExpectedGatherNotice())
    log(f"  building {arch} as {options.precision} for {options.execution_provider} (onnxruntime-genai builder"
        + (", then HQQ)" if options.hqq else ", then the GGUF's blocks)" if gguf else ")"))
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            kv = builder.parse_extra_options(None, str(model_dir), str(staging), options.builder_precision,
                                             options.execution_provider, str(cache), options.builder_options())
            builder.create_model(None, str(model_dir), str(staging), options.builder_precision,
                                 options.execution_provider, str(cache), **kv)
            did = _hqq(staging, options) if options.hqq else ""
        if did:
            log(f"  {did}")
        if gguf is not None:
            gguf_import.rewrite(staging, gguf, options, log=log)
        (staging / EXPORT_INFO).write_text(json.dumps(
            {**options.describe(), "architecture": arch, "source": str(model_dir)}
            | ({"gguf_source": str(gguf.path)} if gguf else {}), indent=1))
        missing = [n for n in ("model.onnx", "genai_config.json", "tokenizer.json") if not (staging / n).exists()]
        if missing:
            raise ExportError(f"builder finished without {', '.join(missing)}: {chatter.getvalue()[-500:]}")
        staging.rename(out_dir)
    except ExportError:
        raise
    except NotImplementedError as e:
        raise ExportError(f"architecture {arch} in {model_dir} is not supported by the onnxruntime-genai "
                          f"builder: {e}") from e
    except Exception as e:  # the builder raises bare Exceptions; map them once here
        raise ExportError(f"export of {model_dir} to {options.precision} failed: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    log(f"  exported {options.precision} to {out_dir} ({dir_size(out_dir) / 1e6:.2f} MB)")
    return out_dir


def mixed_layer_matmuls(names: list[str]) -> set[str]:
    """The head and the MatMuls the builder's `mixed_layers` promotes (llama.cpp's choice: the first and last
    eighth of the layers and every third one's q/k/v and down projections), among the MatMul node `names`."""
    layers = {int(n.split("layers.")[1].split("/")[0]) for n in names if "/layers." in n}
    n = max(layers) + 1 if layers else 0
    up = {i for i in range(n) if i < n / 8 or i >= 7 * n / 8 or (i - round(n / 8)) % 3 == 2}
    return {m for m in names if m == "/lm_head/MatMul" or (
        "/layers." in m and int(m.split("layers.")[1].split("/")[0]) in up
        and any(f"/{k}/" in m for k in ("q_proj", "k_proj", "qkv_proj", "v_proj", "down_proj")))}


def _hqq(folder: pathlib.Path, options: ExportOptions) -> str:
    """Quantizes every MatMul of folder/model.onnx (an fp32 build) to 4 bits with HQQ, in place; for hqq_mixed
    the head and the mixed layers go to int8 RTN instead; the nodes in nodes_to_exclude (LoRA slots) stay float.
    MatMulNBits gets the options' accuracy level (4: int8 activations, the fast CPU kernel), which HQQ's quantizer
    leaves at 0; HQQ's float zero points z become uint8 zero points 0 plus an fp32 min term -z*s
    (training/min_term.py), which onnxruntime runs ~40x faster per MatMul. The float embedding becomes 8-bit
    blocks first (training/q8_embedding.py): for hqq_mixed of a tied model one copy with the 8-bit head. Returns
    what became of the embedding, for the log (the builder's stdout is captured while this runs)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from training.q8_embedding import quantize_embedding

    model = onnx.load(str(folder / "model.onnx"))
    keep = set(options.nodes_to_exclude)
    did = quantize_embedding(model, options.int4_algo == "hqq_mixed" and "/lm_head/MatMul" not in keep,
                             options.int8_accuracy_level)
    eight = set()
    if options.int4_algo == "hqq_mixed":
        eight = mixed_layer_matmuls([n.name for n in model.graph.node if n.op_type == "MatMul"]) - keep
    bs = options.int4_block_size
    q = MatMulNBitsQuantizer(model, block_size=bs, nodes_to_exclude=sorted(keep | eight),
                             algo_config=HQQWeightOnlyQuantConfig(block_size=bs, bits=4))
    q.process()
    if eight:
        q = MatMulNBitsQuantizer(q.model.model, bits=8, block_size=bs, is_symmetric=True, nodes_to_include=sorted(eight),
                                 algo_config=DefaultWeightOnlyQuantConfig(block_size=bs, is_symmetric=True, bits=8))
        q.process()
    for node in q.model.model.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", options.int4_accuracy_level))
    from training.min_term import split_float_zero_points

    split_float_zero_points(q.model.model)   # HQQ's float zero points take onnxruntime's slow kernel
    (folder / "model.onnx").unlink()
    (folder / "model.onnx.data").unlink(missing_ok=True)
    q.model.save_model_to_file(str(folder / "model.onnx"), use_external_data_format=True)
    return did


def read_export_info(export_dir: pathlib.Path) -> dict:
    p = pathlib.Path(export_dir) / EXPORT_INFO
    if not p.exists():
        raise ExportError(f"{export_dir} has no {EXPORT_INFO}; export it with `slmops export` first")
    return json.loads(p.read_text())


def dir_size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def size_report(exports: dict[str, pathlib.Path], reference: str = "fp32") -> list[dict]:
    """Bytes per export and the ratio to the reference precision (when it is among them)."""
    sizes = {k: dir_size(v) for k, v in exports.items()}
    ref = sizes.get(reference)
    return [{"precision": k, "bytes": b, "vs_" + reference: (b / ref if ref else None)} for k, b in sizes.items()]
