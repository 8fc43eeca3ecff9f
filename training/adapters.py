"""Runtime LoRA adapters: a base exported once with adapter slots, and each peft adapter converted to an
`.onnx_adapter` file that onnxruntime-genai activates per request, without rebuilding the base.

How the slots are made: the builder is given one peft adapter as a template (`adapter_path`), so the graph
gets lora_A/lora_B MatMul nodes for its target modules (kept in float under int4 via `nodes_to_exclude`:
a rank-r MatMul is too narrow for 4-bit blocks and is a few KB anyway). The template's LoRA initializers are
then replaced by empty rank-0 defaults and also declared as graph inputs with a symbolic rank: an initializer that
is also a graph input is a default, so with no adapter active the model is exactly the base (and about as fast: a
LoRA path of rank 0 costs little, one of zeros at the template's rank costs 22% of decode), and an adapter of any
rank can be fed.

An adapter file holds A^T and (B * scaling)^T per slot (the builder's layout), in the slot's dtype.
`adapter_slots.json` in the base export records the slots and a fingerprint of the base weights, so an
adapter trained for another base is refused with the mismatch named.
"""
from __future__ import annotations

import hashlib
import json
import math
import pathlib
import re
import shutil
import tempfile
from dataclasses import dataclass, replace

from training.export import ExportError, ExportOptions, export_onnx

SLOTS_FILE = "adapter_slots.json"
BASE_STAMP = "slmops_base.json"      # optional, beside a peft adapter: the fingerprint of its base
RANK_DIM = "lora_rank"
# peft module name -> the builder's path segment for it
MODULE_PATHS = {"q_proj": "attn/q_proj", "k_proj": "attn/k_proj", "v_proj": "attn/v_proj",
                "o_proj": "attn/o_proj", "gate_proj": "mlp/gate_proj", "up_proj": "mlp/up_proj",
                "down_proj": "mlp/down_proj"}
_PEFT_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ExportError):
    """An adapter cannot be used with this base (wrong base, shapes, unsupported peft options)."""


@dataclass(frozen=True)
class LoraSpec:
    """What of a peft LoRA config matters for conversion; anything the runtime slots cannot express is refused."""
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @classmethod
    def from_peft_dir(cls, peft_dir: pathlib.Path) -> LoraSpec:
        cfg_path = pathlib.Path(peft_dir) / "adapter_config.json"
        if not cfg_path.exists():
            raise AdapterError(f"{peft_dir} is not a peft adapter folder (no adapter_config.json)")
        c = json.loads(cfg_path.read_text())
        if c.get("peft_type") != "LORA":
            raise AdapterError(f"{peft_dir}: peft_type {c.get('peft_type')!r} is not LORA")
        for key, ok in (("use_dora", not c.get("use_dora")), ("rank_pattern", not c.get("rank_pattern")),
                        ("alpha_pattern", not c.get("alpha_pattern")), ("bias", c.get("bias", "none") == "none"),
                        ("modules_to_save", not c.get("modules_to_save"))):
            if not ok:
                raise AdapterError(f"{peft_dir}: {key}={c.get(key)!r} cannot be served as a runtime adapter")
        targets = c.get("target_modules") or []
        targets = tuple(sorted([targets] if isinstance(targets, str) else targets))
        unknown = [t for t in targets if t not in MODULE_PATHS]
        if not targets or unknown:
            raise AdapterError(f"{peft_dir}: target modules {list(targets)} must be among "
                               f"{', '.join(MODULE_PATHS)}")
        return cls(rank=int(c["r"]), alpha=float(c["lora_alpha"]), target_modules=targets,
                   use_rslora=bool(c.get("use_rslora", False)))


def base_fingerprint(hf_dir: pathlib.Path) -> str:
    """sha256 over the base's weight files (names and bytes): what an adapter was trained on."""
    hf_dir = pathlib.Path(hf_dir)
    files = sorted(p for p in hf_dir.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise AdapterError(f"{hf_dir} has no weight files to fingerprint")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def stamp_base(peft_dir: pathlib.Path, hf_dir: pathlib.Path) -> str:
    """Records beside a saved peft adapter which base it was trained on (for the mismatch check)."""
    fp = base_fingerprint(hf_dir)
    (pathlib.Path(peft_dir) / BASE_STAMP).write_text(json.dumps({"base_sha256": fp}))
    return fp


def lora_node_names(spec: LoraSpec, num_layers: int) -> tuple[str, ...]:
    return tuple(f"/model/layers.{i}/{MODULE_PATHS[t]}/lora_{ab}/MatMul"
                 for i in range(num_layers) for t in spec.target_modules for ab in "AB")


def slot_name(layer: int, module: str, ab: str) -> str:
    return f"model.layers.{layer}.{MODULE_PATHS[module].replace('/', '.')}.lora_{ab}.MatMul.weight"


def export_base_with_slots(hf_dir: pathlib.Path, template_adapter: pathlib.Path, out_dir: pathlib.Path,
                           options: ExportOptions = ExportOptions("int4"), log=print) -> pathlib.Path:
    """Exports the base once with LoRA slots shaped like `template_adapter` (its values are not kept)."""
    hf_dir, out_dir = pathlib.Path(hf_dir), pathlib.Path(out_dir)
    spec = LoraSpec.from_peft_dir(template_adapter)
    num_layers = int(json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"])
    if out_dir.exists():
        raise ExportError(f"{out_dir} already exists; refusing to overwrite an export")
    # every option as given (the int4 recipe's algorithm too: hqq, gguf_exact keep the slots float as well)
    opts = replace(options, adapter_path=template_adapter,
                   nodes_to_exclude=options.nodes_to_exclude + lora_node_names(spec, num_layers))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.slots.", dir=out_dir.parent))
    try:
        built = export_onnx(hf_dir, work / "build", opts, log=log)
        slots = _slots_to_inputs(built)
        (built / SLOTS_FILE).write_text(json.dumps(
            {"base_sha256": base_fingerprint(hf_dir), "target_modules": list(spec.target_modules),
             "num_layers": num_layers, "slots": slots}, indent=1))
        built.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"  base with {len(slots)} LoRA slots ({', '.join(spec.target_modules)}) at {out_dir}")
    return out_dir


def _slots_to_inputs(export_dir: pathlib.Path) -> dict:
    """Empties the LoRA initializers (rank 0) and declares them graph inputs with a symbolic rank dimension."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    path = export_dir / "model.onnx"
    model = onnx.load(str(path))  # with external data: it is rewritten below
    slots = {}
    existing_inputs = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if ".lora_A." not in init.name and ".lora_B." not in init.name:
            continue
        arr = numpy_helper.to_array(init)
        # lora_A is [in, r], lora_B is [r, out]: the rank is free, the other dimension is the base's.
        is_a = ".lora_A." in init.name
        dims = [arr.shape[0], RANK_DIM] if is_a else [RANK_DIM, arr.shape[1]]
        # The default is rank 0 (empty), not the template's rank in zeros: the same numbers (x @ [in, 0] @ [0, out]
        # is 0), but a request without an adapter skips the rank-r fp32 MatMuls (bench/bench_slot_packing.py).
        empty = np.zeros((arr.shape[0], 0) if is_a else (0, arr.shape[1]), arr.dtype)
        init.CopyFrom(numpy_helper.from_array(empty, init.name))
        if init.name not in existing_inputs:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, dims))
        slots[init.name] = {"shape": [d if isinstance(d, int) else None for d in dims],
                            "dtype": onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name}
    if not slots:
        raise ExportError(f"the builder made no LoRA nodes in {export_dir}; is the template a LoRA adapter?")
    data = export_dir / "model.onnx.data"
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    return slots


def read_slots(base_dir: pathlib.Path) -> dict:
    p = pathlib.Path(base_dir) / SLOTS_FILE
    if not p.exists():
        raise AdapterError(f"{base_dir} was exported without adapter slots (no {SLOTS_FILE}); export the base "
                           f"with export_base_with_slots")
    return json.loads(p.read_text())


def adapter_parameters(peft_dir: pathlib.Path, slots_info: dict) -> dict:
    """Pure mapping from a peft adapter's tensors to the base's slot values; refuses any mismatch."""
    import numpy as np
    from safetensors.numpy import load_file

    spec = LoraSpec.from_peft_dir(peft_dir)
    weights_file = pathlib.Path(peft_dir) / "adapter_model.safetensors"
    if not weights_file.exists():
        raise AdapterError(f"{peft_dir} has no adapter_model.safetensors")
    tensors = load_file(str(weights_file))
    slots = slots_info["slots"]
    params = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        if not m:
            raise AdapterError(f"{peft_dir}: tensor {key} is not a LoRA weight of a decoder layer")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if module not in MODULE_PATHS:
            raise AdapterError(f"{peft_dir}: module {module} has no runtime slot kind")
        name = slot_name(layer, module, ab)
        if name not in slots:
            raise AdapterError(f"{peft_dir}: the base has no LoRA slot for layer {layer} {module} "
                               f"(base slots cover {', '.join(slots_info['target_modules'])} in "
                               f"{slots_info['num_layers']} layers); re-export the base with a template covering it")
        w = value.astype(np.float32)
        if ab == "B":
            w = w * spec.scaling
        w = w.T  # peft stores [out, in]; the graph multiplies x @ W with W as [in, out]
        want = slots[name]["shape"]  # A: [in, None], B: [None, out]; None is the free rank
        fixed = 0 if ab == "A" else 1
        if w.shape[fixed] != want[fixed] or w.shape[1 - fixed] != spec.rank:
            raise AdapterError(f"{peft_dir}: {key} has shape {list(value.shape)} but the base's slot {name} needs "
                               f"{['r' if d is None else d for d in want]} (transposed, rank {spec.rank}); "
                               f"was this adapter trained for another base?")
        params[name] = np.ascontiguousarray(w.astype(slots[name]["dtype"]))
    if not params:
        raise AdapterError(f"{peft_dir} holds no LoRA tensors")
    return params


def convert_adapter(peft_dir: pathlib.Path, base_dir: pathlib.Path, out_file: pathlib.Path,
                    base_sha256: str | None = None, adapter_version: int = 1) -> pathlib.Path:
    """Writes `out_file` (.onnx_adapter) for the slotted base in `base_dir`. The base fingerprint is checked
    when known: given here, stamped beside the adapter (stamp_base), or the local base folder it names."""
    import onnxruntime as ort

    peft_dir, out_file = pathlib.Path(peft_dir), pathlib.Path(out_file)
    info = read_slots(base_dir)
    claimed = base_sha256 or _claimed_base(peft_dir)
    if claimed and claimed != info["base_sha256"]:
        raise AdapterError(f"{peft_dir} was trained for base {claimed[:12]}..., but {base_dir} was exported "
                           f"from base {info['base_sha256'][:12]}...")
    params = adapter_parameters(peft_dir, info)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(adapter_version)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    try:
        fmt.export_adapter(str(tmp))
        tmp.replace(out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return out_file


def _claimed_base(peft_dir: pathlib.Path) -> str | None:
    stamp = peft_dir / BASE_STAMP
    if stamp.exists():
        return json.loads(stamp.read_text()).get("base_sha256")
    named = json.loads((peft_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if named and pathlib.Path(named).is_dir():
        try:
            return base_fingerprint(pathlib.Path(named))
        except AdapterError:
            return None
    return None


ADAPTERS_INDEX = "adapters.json"  # in an export: [{"name", "path", "version"}], read by `slmops models publish`


def covering_template(adapters: dict[str, pathlib.Path]) -> pathlib.Path:
    """The adapter whose target modules cover every other's: its shape becomes the base's slots."""
    if not adapters:
        raise AdapterError("no adapters given")
    specs = {n: LoraSpec.from_peft_dir(p) for n, p in adapters.items()}
    union = set().union(*(s.target_modules for s in specs.values()))
    for name, spec in specs.items():
        if set(spec.target_modules) == union:
            return adapters[name]
    raise AdapterError(f"no single adapter targets every module the adapters use ({', '.join(sorted(union))}); "
                       f"train one adapter over all of them to serve as the slot template")


def slotted_build(adapters: dict[str, pathlib.Path], version: str = "1"):
    """An export seam (for quality_gate.select_precision) that builds the base with slots and writes each
    adapter into adapters/NAME.onnx_adapter plus adapters.json."""
    template = covering_template(adapters)

    def build(hf_dir, dest, options, log=print):
        base = export_base_with_slots(hf_dir, template, dest, options, log=log)
        index = []
        for name, peft_dir in sorted(adapters.items()):
            rel = f"adapters/{name}.onnx_adapter"
            convert_adapter(peft_dir, base, base / rel)
            index.append({"name": name, "path": rel, "version": version})
        (base / ADAPTERS_INDEX).write_text(json.dumps(index, indent=1))
        log(f"  adapters: {', '.join(a['name'] for a in index)}")
        return base
    return build
