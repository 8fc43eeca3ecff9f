"""How much of a fine-tune a 4-bit grid can hold: for every projection weight of a merged fine-tuned model and its
base (HF folders, model.safetensors), the fine-tune's change (tuned - base) against the step of a Q4_1-style
asymmetric RTN of the tuned weights (block 32, step = (max - min) / 15), and the share of that change the
quantized weights keep (the projection of quantized - base on tuned - base, over the tensor).

    .venv/bin/python bench/bench_lora_delta.py --base-dir DIR --tuned-dir DIR

For the main job's folders: --base-dir WORKDIR/cache/smollm2-135m-instruct --tuned-dir WORKDIR/lora/model.
Pure numpy on the weights, no model is run.
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np

BLOCK = 32


def tensor_figures(base: np.ndarray, tuned: np.ndarray) -> tuple[int, int, float, float]:
    """(weights, weights whose change exceeds half a step, median |change| / step, share of the change kept)."""
    n, k = tuned.shape
    tb, bb = tuned.reshape(n, k // BLOCK, BLOCK), base.reshape(n, k // BLOCK, BLOCK)
    lo, hi = tb.min(-1, keepdims=True), tb.max(-1, keepdims=True)
    step = np.where(hi > lo, (hi - lo) / 15, 1.0)
    deq = np.clip(np.rint((tb - lo) / step), 0, 15) * step + lo
    delta = tb - bb
    kept = float(((deq - bb) * delta).sum() / max(float((delta * delta).sum()), 1e-30))
    return delta.size, int((np.abs(delta) > step / 2).sum()), float(np.median(np.abs(delta) / step)), kept


def main() -> None:
    from safetensors.numpy import load_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-dir", type=pathlib.Path, required=True, help="the base model's HF folder")
    ap.add_argument("--tuned-dir", type=pathlib.Path, required=True, help="the merged fine-tuned HF folder")
    args = ap.parse_args()
    base, tuned = (load_file(str(d / "model.safetensors")) for d in (args.base_dir, args.tuned_dir))
    rows = [(k, *tensor_figures(base[k].astype(np.float32), tuned[k].astype(np.float32)))
            for k in sorted(tuned) if k.endswith("proj.weight") and k in base and tuned[k].shape[1] % BLOCK == 0]
    if not rows:
        raise SystemExit("no projection weights in common (*proj.weight) to compare")
    total, moved = sum(r[1] for r in rows), sum(r[2] for r in rows)
    ratios, kept = [r[3] for r in rows], [r[4] for r in rows]
    print(f"{len(rows)} projection weights, {total:,} values")
    print(f"| figure | value |\n|---|---|\n| values the fine-tune moves by more than half a 4-bit step | "
          f"{moved:,} ({100 * moved / total:.4f}%) |\n| median over tensors of median abs(change) / step | "
          f"{np.median(ratios):.3f} |\n| share of the change a Q4_1-style RTN keeps (median over tensors, min, max) "
          f"| {np.median(kept):.3f} ({min(kept):.3f}, {max(kept):.3f}) |")


if __name__ == "__main__":
    main()
