"""A tuned model shipped as the exact int4 base plus a runtime LoRA adapter, on SmolLM2-135M-Instruct: the
gguf_exact base exported with LoRA slots (kept float), the peft adapter converted for it and held to the quality
gate against the fp32 merged model (training/adapter_gate.py), then decode tokens/s with and without the adapter
(64 greedy tokens, median of 3, twice, interleaved).

    .venv/bin/slmops train RECIPE   # a LoRA on smollm2 without merge, e.g. training/recipes/lora_smollm2.yaml
    .venv/bin/python bench/bench_gguf_adapter.py --hf-dir /tmp/slmops-int4-bench/smollm2-hf \\
        --peft RUN/adapters/default --workdir /tmp/slmops-int4-bench/lora

`--hf-dir` is the folder gguf_to_hf made (it records the GGUF); the adapter must have been trained on those
weights. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import greedy_decode_rate, load_model  # noqa: E402
from training.adapter_gate import gate_adapter
from training.adapters import export_base_with_slots
from training.export import ExportOptions, dir_size
from training.quality_gate import GateError, load_examples
from training.quant_recipes import RECIPES


def decode(base: pathlib.Path, adapter: pathlib.Path, prompt: str, tokens: int = 64) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    model = load_model(base)
    adapters = og.Adapters(model)
    adapters.load(str(adapter), "a")
    ids = np.array(og.Tokenizer(model).encode(prompt), dtype=np.int32)
    out = {"no adapter": [], "adapter": []}
    for active in (False, True, False, True):
        rates = [greedy_decode_rate(model, ids, tokens, (adapters, "a") if active else None) for _ in range(3)]
        out["adapter" if active else "no adapter"].append(round(statistics.median(rates), 1))
    return {"decode_tok_s": out, "load_1m": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-dir", type=pathlib.Path, required=True)
    ap.add_argument("--peft", type=pathlib.Path, required=True)
    ap.add_argument("--workdir", type=pathlib.Path, required=True)
    args = ap.parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    base = args.workdir / "base-gguf_exact"
    if not base.exists():
        export_base_with_slots(args.hf_dir, args.peft, base, RECIPES["gguf_exact"].options(ExportOptions("fp32"),
                                                                                          tied=True))
    gated = args.workdir / "gated"
    try:
        report = gate_adapter(args.peft, base, gated, "tuned", base_hf=args.hf_dir)
    except GateError:
        report = json.loads((gated / "gate_report.json").read_text())
    adapter = gated / "bundle" / "tuned.onnx_adapter"
    print(json.dumps({"passed": report["passed"], "reasons": report["reasons"], "reference": report["reference"],
                      "candidate": report["candidate"], "base_bytes": dir_size(base),
                      "adapter_bytes": adapter.stat().st_size,
                      **decode(base, adapter, load_examples()[0].prompt),
                      "load_1m_start": load0, "seconds": time.time() - t0}, indent=1))


if __name__ == "__main__":
    main()
