"""The gguf_exact int4 recipe (training/gguf_import.py) on a tiny Llama GGUF written here with gguf.GGUFWriter
(Q4_1 body, Q8_0 tied embedding/head, F32 norms) and converted by model_sources.gguf_to_hf, the path the real
SmolLM2 GGUF takes: the graph's codes, scales and mins are the GGUF's bit for bit, the model loads and decodes
in onnxruntime-genai with logits that match the fp32 export of the same GGUF, and an unimportable tensor type,
a folder without a GGUF and a folder whose weights were changed are each a clear error before any build."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from training.export import ExportError, ExportOptions, export_onnx

quiet = dict(log=lambda m: None)
CHATML_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
HEADS, KV_HEADS, HIDDEN, LAYERS, FFN = 4, 2, 64, 2, 128


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (for rope), the one transformers' loader undoes."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, tok_dir, types: dict | None = None, seed: int = 0, head: str | None = None):
    """A random tiny Llama as llama.cpp would write it: q/k rows permuted, body Q4_1, token_embd Q8_0 (tied head,
    or with `head` a separate output.weight of that type), norms F32; `types` overrides a tensor's type (e.g.
    {"blk.1.ffn_down.weight": "Q5_0"}). One block of blk.0.attn_v is constant, so its scale d is 0."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    tok = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items()}
    for a in tok["added_tokens"]:
        vocab[a["content"]] = a["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    ids = {t: vocab[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_file_type(3)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["<|im_start|>"])
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_unk_token_id(ids["<|endoftext|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    types = types or {}

    def add(name, value, default):
        kind = getattr(Q, types.get(name, default))
        data = value.astype(np.float32) if kind == Q.F32 else gguf.quants.quantize(value.astype(np.float32), kind)
        w.add_tensor(name, data, raw_dtype=kind)

    add("token_embd.weight", rng.standard_normal((len(tokens), HIDDEN)) * 0.5, "Q8_0")
    add("output_norm.weight", 1 + 0.1 * rng.standard_normal(HIDDEN), "F32")
    if head:
        add("output.weight", rng.standard_normal((len(tokens), HIDDEN)) * 0.5, head)
    kv = HIDDEN // HEADS * KV_HEADS
    for i in range(LAYERS):
        def lin(rows, cols):
            return rng.standard_normal((rows, cols)) / np.sqrt(cols)
        q, k, v = lin(HIDDEN, HIDDEN), lin(kv, HIDDEN), lin(kv, HIDDEN)
        if i == 0:
            v[3, 32:64] = 0.25    # a constant block: Q4_1 stores d = 0, m = 0.25
        add(f"blk.{i}.attn_norm.weight", 1 + 0.1 * rng.standard_normal(HIDDEN), "F32")
        add(f"blk.{i}.attn_q.weight", _permute(q, HEADS), "Q4_1")
        add(f"blk.{i}.attn_k.weight", _permute(k, KV_HEADS), "Q4_1")
        add(f"blk.{i}.attn_v.weight", v, "Q4_1")
        add(f"blk.{i}.attn_output.weight", lin(HIDDEN, HIDDEN), "Q4_1")
        add(f"blk.{i}.ffn_norm.weight", 1 + 0.1 * rng.standard_normal(HIDDEN), "F32")
        add(f"blk.{i}.ffn_gate.weight", lin(FFN, HIDDEN), "Q4_1")
        add(f"blk.{i}.ffn_up.weight", lin(FFN, HIDDEN), "Q4_1")
        add(f"blk.{i}.ffn_down.weight", lin(HIDDEN, FFN), "Q4_1")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from training.tiny import CHATML, ChatFormat, support_chats, train_tokenizer

    root = tmp_path_factory.mktemp("gguf")
    fmt = ChatFormat.from_dict(CHATML)
    train_tokenizer([fmt.render(c, add_generation_prompt=False) for c in support_chats()], 512, root / "tok")
    return write_tiny_gguf(root / "tiny.Q4_1.gguf", root / "tok")


@pytest.fixture(scope="module")
def gguf_hf(tiny_gguf):
    from training.model_sources import gguf_to_hf

    return gguf_to_hf(tiny_gguf, tiny_gguf.parent / "hf")


@pytest.fixture(scope="module")
def exports(gguf_hf):
    """fp32 of the GGUF's dequantized weights; gguf_exact with fp32 activations (accuracy level 1, body and head)
    and with the defaults (level 4: int8 activations, the fast CPU kernels)."""
    root = gguf_hf.parent
    return {
        "fp32": export_onnx(gguf_hf, root / "fp32", ExportOptions("fp32"), **quiet),
        "exact_fp32_act": export_onnx(gguf_hf, root / "exact1", ExportOptions(
            "int4", int4_algo="gguf_exact", int4_accuracy_level=1, int8_accuracy_level=1), **quiet),
        "exact": export_onnx(gguf_hf, root / "exact", ExportOptions("int4", int4_algo="gguf_exact"), **quiet),
    }


def _gguf_blocks(path, name):
    """The GGUF's blocks of `name` read straight from its bytes (independently of training/gguf_import), rows in
    HF order (transformers' own reverse permutation): Q4_1 -> (codes, d, m); Q8_0 -> (codes, d, None)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    raw = np.asarray(t.data)
    if t.tensor_type.name == "Q4_1":
        b = raw.reshape(raw.shape[0], -1, 20)
        d, m = b[..., 0:2].copy().view(np.float16)[..., 0], b[..., 2:4].copy().view(np.float16)[..., 0]
        lo, hi = b[..., 4:] & 15, b[..., 4:] >> 4   # ggml: byte j holds value j (low) and value j + 16 (high)
        codes = np.concatenate([lo, hi], axis=-1)
    else:
        b = raw.reshape(raw.shape[0], -1, 34)
        d, m, codes = b[..., 0:2].copy().view(np.float16)[..., 0], None, b[..., 2:].copy().view(np.int8)
    heads = HEADS if ".attn_q." in name else KV_HEADS if ".attn_k." in name else None
    if heads:
        unperm = LlamaTensorProcessor()._reverse_permute_weights
        rows = unperm(np.arange(raw.shape[0])[:, None], HEADS, heads)[:, 0]
        codes, d, m = codes[rows], d[rows], m[rows]
    return codes, d, m


def _graph(export_dir):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(export_dir / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: n for n in model.graph.node}, inits


def test_the_graph_holds_the_gguf_codes_scales_and_mins_bit_for_bit(tiny_gguf, exports):
    """Exact: every 4-bit code, every scale d (fp16 -> fp32 is exact) and every min m of the Q4_1 tensors, the
    Q8_0 codes (+128, zero point 128) and scales of the tied head and embedding; the zero points of the 4-bit
    weights are 0 (the min is a separate term). Within fp32 rounding: only the sums the kernels compute."""
    nodes, inits = _graph(exports["exact"])
    for layer in range(LAYERS):
        for path, parts in (("attn/qkv_proj", ("attn_q", "attn_k", "attn_v")), ("attn/o_proj", ("attn_output",)),
                            ("mlp/gate_proj", ("ffn_gate",)), ("mlp/up_proj", ("ffn_up",)),
                            ("mlp/down_proj", ("ffn_down",))):
            node = nodes[f"/model/layers.{layer}/{path}/MatMulNBits"]
            attrs = {a.name: a.i for a in node.attribute}
            assert (attrs["bits"], attrs["block_size"]) == (4, 32)
            blocks = [_gguf_blocks(tiny_gguf, f"blk.{layer}.{p}.weight") for p in parts]
            codes = np.concatenate([b[0] for b in blocks])
            packed = inits[node.input[1]]
            assert np.array_equal(np.stack([packed & 15, packed >> 4], -1).reshape(codes.shape), codes)
            d = np.concatenate([b[1] for b in blocks])
            assert np.array_equal(inits[node.input[2]], d.astype(np.float32).reshape(-1))
            assert not inits[node.input[3]].any()
            min_matmul = nodes[f"/model/layers.{layer}/{path}/MatMulMin"]
            assert np.array_equal(inits[min_matmul.input[1]], np.concatenate([b[2] for b in blocks]).astype(np.float32).T)
    assert (np.concatenate([_gguf_blocks(tiny_gguf, "blk.0.attn_v.weight")[1]]) == 0).any()   # the d = 0 block

    head = nodes["/lm_head/MatMul"]
    assert head.op_type == "MatMulNBits" and {a.name: a.i for a in head.attribute}["bits"] == 8
    codes, d, _ = _gguf_blocks(tiny_gguf, "token_embd.weight")
    assert np.array_equal(inits[head.input[1]].astype(np.int16) - 128, codes)
    assert np.array_equal(inits[head.input[2]], d.astype(np.float32).reshape(-1))
    assert (inits[head.input[3]] == 128).all()
    gbq = nodes["/model/embed_tokens/GatherBlockQuantized"]   # reads the head's initializers: one copy
    reshaped = [nodes[gbq.input[i].removesuffix("/output_0")].input[0] for i in (0, 2, 3)]
    assert reshaped == [head.input[1], head.input[2], head.input[3]]
    float_matmuls = [n.name for n in nodes.values() if n.op_type == "MatMul" and n.input[1] in inits]
    assert float_matmuls and all(n.endswith("/MatMulMin") for n in float_matmuls)   # only the min terms


def test_the_dequantized_weights_are_the_gguf_values_rounded_once(tiny_gguf):
    """What transformers (and so the fp32 reference) holds is d*q + m rounded once to fp32: within 2^-24
    relative of the exact value of the codes, scales and mins the graph carries."""
    import gguf

    t = next(t for t in gguf.GGUFReader(str(tiny_gguf)).tensors if t.name == "blk.1.ffn_down.weight")
    codes, d, m = _gguf_blocks(tiny_gguf, "blk.1.ffn_down.weight")
    exact = d.astype(np.float64)[..., None] * codes + m.astype(np.float64)[..., None]
    fp32 = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(exact.shape)
    assert (np.abs(fp32 - exact) <= np.abs(exact) * 2.0 ** -24).all()


def _logits(export_dir, tokens):
    import onnxruntime_genai as og

    cfg = og.Config(str(export_dir))
    cfg.clear_providers()
    model = og.Model(cfg)
    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=len(tokens) + 8, do_sample=False)
    g = og.Generator(model, gp)
    g.append_tokens(np.array(tokens, dtype=np.int32))
    prompt = np.asarray(g.get_output("logits"), dtype=np.float64)[0]
    out = []
    while not g.is_done():
        g.generate_next_token()
        out.append(int(g.get_next_tokens()[0]))
    return prompt, out


def test_it_loads_decodes_and_matches_the_fp32_export(exports):
    tokens = list(range(3, 40))
    ref, ref_out = _logits(exports["fp32"], tokens)
    exact, exact_out = _logits(exports["exact_fp32_act"], tokens)
    fast, fast_out = _logits(exports["exact"], tokens)
    scale = np.abs(ref).max()
    # fp32 activations: the same weights, summed in another order (measured: max |diff| 1.3e-6 of the largest logit)
    assert np.abs(exact - ref).max() <= 1e-4 * scale
    assert exact_out == ref_out and len(exact_out) == 8
    # int8 activations (the shipped default): close, not equal (measured: 3.1% of the largest logit on this random
    # model, whose logits are larger than a trained one's)
    assert np.abs(fast - ref).max() <= 0.05 * scale
    assert len(fast_out) == 8
    info = json.loads((exports["exact"] / "export_info.json").read_text())
    assert info["gguf_source"].endswith("tiny.Q4_1.gguf")
    size = {k: sum(f.stat().st_size for f in v.iterdir()) for k, v in exports.items()}
    assert size["exact"] < size["fp32"] / 2


def test_a_tensor_type_that_cannot_be_imported_exactly_is_named_before_the_build(tiny_gguf, gguf_hf, tmp_path):
    bad = write_tiny_gguf(tmp_path / "bad.gguf", tiny_gguf.parent / "tok", {"blk.1.ffn_down.weight": "Q5_0"})
    hf = shutil.copytree(gguf_hf, tmp_path / "hf")
    (hf / "gguf_source.json").write_text(json.dumps({"gguf": str(bad)}))
    with pytest.raises(ExportError, match=r"tensor blk\.1\.ffn_down\.weight of bad\.gguf is Q5_0, which cannot be "
                                          r"imported exactly"):
        export_onnx(hf, tmp_path / "out", ExportOptions("int4", int4_algo="gguf_exact"), **quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "hf"]   # nothing was built


def test_a_folder_without_a_gguf_is_refused(gguf_hf, tmp_path):
    hf = shutil.copytree(gguf_hf, tmp_path / "hf")
    (hf / "gguf_source.json").unlink()
    with pytest.raises(ExportError, match="gguf_exact needs a GGUF source: .* has no gguf_source.json"):
        export_onnx(hf, tmp_path / "out", ExportOptions("int4", int4_algo="gguf_exact"), **quiet)


def test_changed_weights_are_refused_by_comparison_not_by_name(gguf_hf, tmp_path):
    """A fine-tuned folder keeps gguf_source.json (copied along), yet its weights are not the GGUF's."""
    from safetensors.numpy import load_file, save_file

    hf = shutil.copytree(gguf_hf, tmp_path / "hf")
    weights = load_file(str(hf / "model.safetensors"))
    weights["model.layers.1.self_attn.q_proj.weight"][0, 0] += 1e-3
    save_file(weights, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight in .* differs from the "
                                          r"dequantized blk\.1\.attn_q\.weight .* max \|diff\| 0\.001"):
        export_onnx(hf, tmp_path / "out", ExportOptions("int4", int4_algo="gguf_exact"), **quiet)


def test_the_search_tries_gguf_exact_first_for_its_gguf_and_skips_it_with_the_reason_otherwise(gguf_hf, tiny_hf,
                                                                                                tmp_path):
    from training.quality_gate import check_publishable, load_examples, select_precision
    from training.quant_recipes import unavailable

    examples = load_examples(limit=4)
    report = select_precision(gguf_hf, tmp_path / "gguf", examples=examples, **quiet)
    assert report["order"][0] == "gguf_exact" and report["chosen_recipe"] == "gguf_exact"
    assert [t["verdict"] for t in report["tried"]] == ["passed"]
    assert check_publishable(tmp_path / "gguf")["recipe"] == "gguf_exact"

    report = select_precision(tiny_hf, tmp_path / "plain", examples=examples, int4_recipes=("gguf_exact", "rtn"),
                              **quiet)
    skipped, rtn = report["tried"]
    assert skipped["recipe"] == "gguf_exact" and skipped["verdict"] == "skipped" and skipped["bytes"] is None
    assert "needs a GGUF source" in skipped["reasons"][0] and "skipped: int4 (gguf_exact)" in report["why"]
    assert rtn["recipe"] == "rtn" and report["chosen_recipe"] == "rtn"
    assert not (tmp_path / "plain" / "export_info.json").read_text().count("gguf")
    assert unavailable(gguf_hf) == {}


def _lora(base_dir, out, seed=1):
    """A peft LoRA on q_proj and v_proj with non-zero B (as after training)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    model.save_pretrained(out)
    return out


def test_a_tuned_model_ships_as_an_adapter_on_the_exact_base_held_to_the_gate_against_the_merged_fp32(
        gguf_hf, tmp_path):
    """The merged model is off the GGUF's grid (gguf_exact refuses it by comparison); the same tuning as a
    runtime adapter on the gguf_exact base (LoRA slots kept float) passes the int4 gate against the merged fp32."""
    from training.adapter_gate import gate_adapter, merge_reference
    from training.adapters import export_base_with_slots
    from training.quality_gate import GateThresholds, load_examples
    from training.quant_recipes import RECIPES, unavailable

    peft = _lora(gguf_hf, tmp_path / "peft")
    merged = merge_reference(gguf_hf, peft, tmp_path / "merged")
    assert "differs from the dequantized blk.0.attn_q.weight" in unavailable(merged)["gguf_exact"]

    base = export_base_with_slots(gguf_hf, peft, tmp_path / "base", RECIPES["gguf_exact"].options(
        ExportOptions("fp32"), tied=True), **quiet)
    nodes, inits = _graph(base)
    assert nodes["/model/layers.0/attn/q_proj/MatMulNBits"].op_type == "MatMulNBits"   # the base: GGUF blocks
    assert nodes["/model/layers.0/attn/q_proj/lora_A/MatMul"].op_type == "MatMul"      # the slot: float
    report = gate_adapter(peft, base, tmp_path / "gated", "a", thresholds=GateThresholds(max_new_tokens=8),
                          examples=load_examples(limit=6), **quiet)
    assert report["passed"] and report["precision"] == "int4", report["reasons"]


def test_export_no_fallback_counts_gguf_exact_only_where_the_source_allows_it(gguf_hf, tiny_hf, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    from training.quant_recipes import DEFAULT_INT4

    runner = CliRunner()
    r = runner.invoke(app, ["export", str(tiny_hf), str(tmp_path / "a"), "--int4-recipes", "gguf_exact",
                            "--no-fallback"])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "no int4 recipe applies to" in said and "needs a GGUF source" in said, r.output
    assert not (tmp_path / "a").exists()
    r = runner.invoke(app, ["export", str(gguf_hf), str(tmp_path / "b"), "--no-fallback", "--gate-examples", "3"])
    assert r.exit_code == 0, r.output
    assert "chose int4, recipe gguf_exact" in " ".join(r.output.split())
    report = json.loads((tmp_path / "b" / "gate_report.json").read_text())
    assert report["order"] == list(DEFAULT_INT4) and report["max_attempts"] == len(DEFAULT_INT4)


def test_an_untied_head_of_its_own_type_is_imported_too(tiny_gguf, tmp_path):
    """A GGUF with its own output.weight (here Q4_1: 4-bit plus the min term) and a Q8_0 embedding of its own."""
    from training.model_sources import gguf_to_hf

    hf = gguf_to_hf(write_tiny_gguf(tmp_path / "untied.gguf", tiny_gguf.parent / "tok", head="Q4_1"), tmp_path / "hf")
    assert not json.loads((hf / "config.json").read_text())["tie_word_embeddings"]
    ref_dir = export_onnx(hf, tmp_path / "fp32", ExportOptions("fp32"), **quiet)
    exact_dir = export_onnx(hf, tmp_path / "exact", ExportOptions("int4", int4_algo="gguf_exact", int4_accuracy_level=1,
                                                                  int8_accuracy_level=1), **quiet)
    nodes, inits = _graph(exact_dir)
    assert {a.name: a.i for a in nodes["/lm_head/MatMulNBits"].attribute}["bits"] == 4
    assert "/lm_head/MatMulMin" in nodes
    gbq = nodes["/model/embed_tokens/GatherBlockQuantized"]
    codes, d, _ = _gguf_blocks(tmp_path / "untied.gguf", "token_embd.weight")
    assert np.array_equal(inits[gbq.input[0]].astype(np.int16) - 128, codes.reshape(codes.shape[0], -1))
    assert np.array_equal(inits[gbq.input[2]], d.astype(np.float32))
    tokens = list(range(3, 40))
    ref, ref_out = _logits(ref_dir, tokens)
    got, got_out = _logits(exact_dir, tokens)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max() and got_out == ref_out


def test_a_folder_converted_before_the_record_gets_it_when_its_weights_are_still_the_ggufs(tiny_gguf, gguf_hf,
                                                                                         tmp_path):
    from safetensors.numpy import load_file, save_file

    from training.model_sources import gguf_to_hf

    old = shutil.copytree(gguf_hf, tmp_path / "old")
    (old / "gguf_source.json").unlink()
    assert gguf_to_hf(tiny_gguf, old) == old
    assert json.loads((old / "gguf_source.json").read_text())["gguf"] == str(tiny_gguf.resolve())
    changed = shutil.copytree(gguf_hf, tmp_path / "changed")
    (changed / "gguf_source.json").unlink()
    weights = load_file(str(changed / "model.safetensors"))
    weights["model.norm.weight"][0] += 1e-3
    save_file(weights, str(changed / "model.safetensors"), metadata={"format": "pt"})
    gguf_to_hf(tiny_gguf, changed)
    assert not (changed / "gguf_source.json").exists()


def test_with_fp32_activations_the_adapter_on_the_exact_base_computes_the_merged_model(gguf_hf, tmp_path):
    """Why the main job retries a failing tuned adapter on the base gated with fp32 activations (accuracy level 1,
    control_plane/demo.py): the base's weights are the GGUF's exactly, so the adapter on it is the merged fp32 model
    up to fp32 rounding (and the 8-bit head's int8 activations, level 4 in both); level 4 in the 4-bit body (int8
    activations, the default) is what moves it."""
    from training.adapter_gate import gate_adapter
    from training.adapters import export_base_with_slots
    from training.quality_gate import GateThresholds, load_examples
    from training.quant_recipes import RECIPES

    peft = _lora(gguf_hf, tmp_path / "peft")
    examples, t = load_examples(limit=6), GateThresholds(max_new_tokens=8)
    got = {}
    for level in (1, 4):
        base = export_base_with_slots(gguf_hf, peft, tmp_path / f"base{level}", RECIPES["gguf_exact"].options(
            ExportOptions("fp32", int4_accuracy_level=level), tied=True), **quiet)
        levels = {a.i for n in _graph(base)[0].values() if n.op_type == "MatMulNBits"
                  and {x.name: x.i for x in n.attribute}.get("bits", 4) == 4 for a in n.attribute
                  if a.name == "accuracy_level"}
        assert levels == {level}
        got[level] = gate_adapter(peft, base, tmp_path / f"gated{level}", "a", thresholds=t, examples=examples,
                                  **quiet)
    ref, exact, fast = got[1]["reference"], got[1]["candidate"], got[4]["candidate"]
    assert exact["greedy_agreement"] == 1.0 and abs(exact["perplexity"] / ref["perplexity"] - 1) < 1e-3
    # measured here: level 1 -0.04%, level 4 -3.1% (a random tiny model's perplexity is in the millions)
    assert abs(fast["perplexity"] / ref["perplexity"] - 1) > 10 * abs(exact["perplexity"] / ref["perplexity"] - 1)
