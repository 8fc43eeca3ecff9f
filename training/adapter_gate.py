"""The per-adapter quality gate: an adapter-only version (a LoRA adapter for a base already on the devices) is held
to the same gate as a full model before it may be published.

Reference: the fp32 merged model (peft folds the adapter into the base's Hugging Face weights; exported fp32).
Candidate: what a device runs for MODEL:ADAPTER: the base's own export (its precision, with LoRA slots) with the
converted adapter active. Measured and judged by training/quality_gate.py (`evaluate`, `judge`, the same
thresholds and eval set as a full model), so a full model and an adapter cannot be gated two ways.

The gated folder (`gate_adapter` writes it, pass or fail):
    OUT/gate.json           the verdict, with the sha256 of bundle/NAME.onnx_adapter (quality_gate.write_verdict)
    OUT/gate_report.json    reference and candidate metrics, thresholds, reasons
    OUT/bundle/NAME.onnx_adapter   the only file the version uploads
A failed verdict raises quality_gate.GateError with the reasons; `check_publishable(OUT)` refuses it too.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from dataclasses import asdict

from training.adapters import AdapterError, base_fingerprint, convert_adapter, read_slots
from training.export import ExportError, ExportOptions, export_onnx, read_export_info
from training.quality_gate import Example, GateError, GateThresholds, evaluate, judge, load_examples, write_verdict

REPORT = "gate_report.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def base_source(base_dir: pathlib.Path, base_hf: pathlib.Path | None = None) -> pathlib.Path:
    """The Hugging Face folder the slotted base in `base_dir` was exported from (given, or named in its
    export_info.json), checked against the fingerprint its adapter_slots.json recorded."""
    info = read_export_info(base_dir)
    hf = pathlib.Path(base_hf or info.get("source") or "")
    if not (hf / "config.json").is_file():
        raise AdapterError(f"the base's Hugging Face folder {str(hf) or '(none recorded)'} is not there; the gate "
                           f"needs it for the merged fp32 reference (give it as --base-model)")
    want = read_slots(base_dir)["base_sha256"]
    if base_fingerprint(hf) != want:
        raise AdapterError(f"{hf} is not the base {base_dir} was exported from (weights {base_fingerprint(hf)[:12]}"
                           f"... vs {want[:12]}...)")
    return hf


def merge_reference(base_hf: pathlib.Path, peft_dir: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """A Hugging Face folder with the adapter merged into the base's weights, in fp32 (peft's merge_and_unload),
    and the base's tokenizer files."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_hf, torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, peft_dir).merge_and_unload()
    merged.save_pretrained(dest)
    for p in pathlib.Path(base_hf).iterdir():   # tokenizer and the rest; the weights and config are the merged ones
        if p.is_file() and p.suffix not in WEIGHT_SUFFIXES and not (dest / p.name).exists() \
                and not p.name.endswith(".index.json"):
            shutil.copy(p, dest / p.name)
    return dest


def gate_adapter(peft_dir: pathlib.Path, base_dir: pathlib.Path, out_dir: pathlib.Path, adapter: str,
                 base_hf: pathlib.Path | None = None, thresholds: GateThresholds = GateThresholds(),
                 examples: list[Example] | None = None, convert=None, log=print) -> dict:
    """Converts `peft_dir` for the slotted base in `base_dir`, measures it there against the fp32 merged
    reference and writes OUT (see the module docstring). Returns the report; raises GateError when the adapter
    fails (OUT still holds the failed verdict and the report), AdapterError/ExportError when it cannot be
    measured. `convert(peft_dir, base_dir, out_file)` is the conversion seam (default: convert_adapter)."""
    convert = convert or convert_adapter
    peft_dir, base_dir, out_dir = pathlib.Path(peft_dir), pathlib.Path(base_dir), pathlib.Path(out_dir)
    if out_dir.exists():
        raise ExportError(f"{out_dir} already exists; refusing to overwrite a gated adapter")
    precision = read_export_info(base_dir)["precision"]
    hf = base_source(base_dir, base_hf)
    examples = examples if examples is not None else load_examples(limit=thresholds.max_examples)
    if not examples:
        raise GateError("the gate's eval set is empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.gate.", dir=out_dir.parent))
    try:
        rel = f"bundle/{adapter}.onnx_adapter"
        adapter_file = convert(peft_dir, base_dir, work / "out" / rel)
        log(f"  adapter gate: merging {peft_dir} into {hf} for the fp32 reference")
        ref_dir = export_onnx(merge_reference(hf, peft_dir, work / "merged-hf"), work / "reference-fp32",
                              ExportOptions("fp32"), log=log)
        log(f"  adapter gate: measuring the fp32 merged reference on {len(examples)} examples")
        ref, ref_greedy = evaluate(ref_dir, examples, thresholds.max_new_tokens)
        got = evaluate(base_dir, examples, thresholds.max_new_tokens, ref_greedy, adapter=adapter_file)[0]
        reasons = judge(precision, ref, got, thresholds)
        passed = not reasons
        log(f"  adapter gate: {adapter} on the {precision} base "
            f"{'PASSED' if passed else 'failed: ' + '; '.join(reasons)}")
        verdict = write_verdict(work / "out", precision, passed, reasons, got, ref, thresholds)
        report = {"kind": "adapter", "adapter": adapter, "file": rel, "passed": passed, "reasons": reasons,
                  "precision": precision, "base_dir": str(base_dir), "base_model": str(hf),
                  "reference": {"what": "fp32 merged (peft merge_and_unload, exported fp32)", **asdict(ref)},
                  "candidate": {"what": f"the {precision} base export with the adapter active", **asdict(got)},
                  "thresholds": asdict(thresholds), "files": verdict["files"]}
        (work / "out" / REPORT).write_text(json.dumps(report, indent=1))
        (work / "out").rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not passed:
        raise GateError(f"adapter {adapter} failed the quality gate on its {precision} base vs the fp32 merged "
                        f"reference: {'; '.join(reasons)} (report: {out_dir / REPORT})")
    return report
