"""Runtime LoRA adapters: a base exported once with slots, peft adapters converted without rebuilding it,
equal to PeftModel in fp32, refused for another base, and served per request as BASE:ADAPTER."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import openai
import pytest
from test_openai_api import Server  # the real-HTTP harness (uvicorn + the official client)

from training.adapters import AdapterError, convert_adapter, export_base_with_slots, read_slots, stamp_base
from training.export import ExportOptions, export_onnx

quiet = dict(log=lambda m: None)
PROMPT = "<|im_start|>user\nKestrel K2 error code E17?<|im_end|>\n<|im_start|>assistant\n"


def make_adapter(base_dir: pathlib.Path, out: pathlib.Path, r: int, targets: list[str], seed: int) -> pathlib.Path:
    """A peft LoRA adapter with non-zero B (as after training), saved and stamped with its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    model.save_pretrained(out)
    stamp_base(out, base_dir)
    return out


@pytest.fixture(scope="module")
def lora(tiny_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    a = make_adapter(tiny_hf, root / "peft-a", 4, ["q_proj", "v_proj", "down_proj"], seed=1)
    b = make_adapter(tiny_hf, root / "peft-b", 8, ["q_proj", "v_proj"], seed=2)  # another rank, fewer modules
    base = export_base_with_slots(tiny_hf, a, root / "base-fp32", ExportOptions("fp32"), **quiet)
    files = {n: convert_adapter(p, base, root / f"{n}.onnx_adapter") for n, p in (("a", a), ("b", b))}
    return {"root": root, "peft": {"a": a, "b": b}, "base": base, "files": files}


def og_logits(model_dir, adapter_file=None):
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    ids = og.Tokenizer(model).encode(PROMPT)
    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=len(ids) + 1)
    g = og.Generator(model, gp)
    if adapter_file:
        adapters = og.Adapters(model)
        adapters.load(str(adapter_file), "x")
        g.set_active_adapter(adapters, "x")
    g.append_tokens(ids)
    return ids.tolist(), np.asarray(g.get_output("logits"))[0]


def torch_logits(tiny_hf, ids, peft_dir=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf)
    if peft_dir:
        model = PeftModel.from_pretrained(model, peft_dir)
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("name", [None, "a", "b"])
def test_adapter_logits_equal_peftmodel_in_fp32(tiny_hf, lora, name):
    ids, got = og_logits(lora["base"], lora["files"][name] if name else None)
    want = torch_logits(tiny_hf, ids, lora["peft"][name] if name else None)
    assert np.abs(got - want).max() < 1e-4
    if name:  # the adapter really changes the model
        assert np.abs(want - torch_logits(tiny_hf, ids)).max() > 1e-2


def test_slots_are_inputs_with_a_free_rank_and_the_adapter_is_small(lora):
    import onnx

    slots = read_slots(lora["base"])["slots"]
    assert len(slots) == 2 * 3 * 2  # layers x modules x (A, B)
    assert all(None in s["shape"] for s in slots.values())
    assert lora["files"]["a"].stat().st_size < 50_000
    # with no adapter active the slots run at rank 0 (their defaults are empty), not at the template's rank in zeros
    graph = onnx.load(str(lora["base"] / "model.onnx"), load_external_data=False).graph
    defaults = {i.name: list(i.dims) for i in graph.initializer if i.name in slots}
    assert set(defaults) == set(slots) and all(0 in dims for dims in defaults.values())


def test_int4_base_keeps_lora_in_float_and_serves_adapters(tiny_hf, lora, tmp_path):
    import onnx

    base = export_base_with_slots(tiny_hf, lora["peft"]["a"], tmp_path / "int4", ExportOptions("int4"), **quiet)
    graph = onnx.load(str(base / "model.onnx"), load_external_data=False).graph
    lora_ops = {n.op_type for n in graph.node if "/lora_" in n.name}
    assert lora_ops == {"MatMul"}
    assert any(n.op_type == "MatMulNBits" for n in graph.node)
    f = convert_adapter(lora["peft"]["a"], base, tmp_path / "a.onnx_adapter")
    _, plain = og_logits(base)
    _, adapted = og_logits(base, f)
    assert np.isfinite(adapted).all() and np.abs(adapted - plain).max() > 1e-2


def test_adapter_for_another_base_is_refused_with_the_mismatch_named(tiny_hf, lora, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    # same shapes, different weights: caught by the base fingerprint
    other = tmp_path / "other-hf"
    torch.manual_seed(5)
    AutoModelForCausalLM.from_config(LlamaConfig.from_pretrained(tiny_hf)).save_pretrained(other)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_hf / n, other / n)
    foreign = make_adapter(other, tmp_path / "foreign", 4, ["q_proj", "v_proj"], seed=3)
    with pytest.raises(AdapterError, match="was trained for base"):
        convert_adapter(foreign, lora["base"], tmp_path / "f.onnx_adapter")
    # different shapes (a wider model), no fingerprint to go by: caught by the slot shapes
    wide = tmp_path / "wide-hf"
    cfg = LlamaConfig.from_pretrained(tiny_hf)
    cfg.hidden_size, cfg.intermediate_size = 96, 192
    AutoModelForCausalLM.from_config(cfg).save_pretrained(wide)
    wide_adapter = make_adapter(wide, tmp_path / "wide", 4, ["q_proj"], seed=4)
    (wide_adapter / "slmops_base.json").unlink()
    cfg_file = wide_adapter / "adapter_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "base_model_name_or_path": "elsewhere"}))
    with pytest.raises(AdapterError, match=r"q_proj.lora_A.weight has shape \[4, 96\].*needs \[64, 'r'\]"):
        convert_adapter(wide_adapter, lora["base"], tmp_path / "w.onnx_adapter")
    # a module the base has no slot for
    up = make_adapter(tiny_hf, tmp_path / "up", 4, ["up_proj"], seed=6)
    with pytest.raises(AdapterError, match="no LoRA slot for layer 0 up_proj"):
        convert_adapter(up, lora["base"], tmp_path / "u.onnx_adapter")
    assert not list(tmp_path.glob("*.onnx_adapter"))


# ---- the per-adapter quality gate -----------------------------------------------------------------------
def gate_examples():
    from training.quality_gate import load_examples

    return load_examples(limit=6)


def scaled_conversion(factor: float):
    """A conversion that ships the adapter with its B weights scaled (a corrupted adapter in transit): the
    reference is still merged from the true adapter, so the gate must see the difference."""
    from safetensors.numpy import load_file, save_file

    def convert(peft_dir, base_dir, out_file):
        bad = pathlib.Path(out_file).parent.parent.parent / "scaled-peft"
        shutil.copytree(peft_dir, bad)
        t = load_file(str(bad / "adapter_model.safetensors"))
        save_file({k: v * factor if "lora_B" in k else v for k, v in t.items()}, str(bad / "adapter_model.safetensors"))
        return convert_adapter(bad, base_dir, out_file)
    return convert


def test_adapter_gate_passes_an_adapter_on_its_base_against_the_merged_reference(tiny_hf, lora, tmp_path):
    from training.adapter_gate import gate_adapter
    from training.publish import adapter_manifest
    from training.quality_gate import GateThresholds, check_publishable

    out = tmp_path / "gated"
    report = gate_adapter(lora["peft"]["a"], lora["base"], out, "a", thresholds=GateThresholds(max_new_tokens=8),
                          examples=gate_examples(), log=lambda m: None)
    assert report["passed"] and report["reasons"] == [] and report["base_model"] == str(tiny_hf)
    assert report["reference"]["what"].startswith("fp32 merged")
    # on an fp32 base the adapter's LoRA branch computes what the merged weights compute
    assert abs(report["candidate"]["perplexity"] / report["reference"]["perplexity"] - 1) < 1e-3
    assert report["candidate"]["greedy_agreement"] == 1.0
    verdict = check_publishable(out)
    assert list(verdict["files"]) == ["bundle/a.onnx_adapter"]
    assert json.loads((out / "gate_report.json").read_text()) == report
    m, bundle = adapter_manifest(out, "tiny-a", "v1", {"name": "tiny", "version": "v1"}, "a1")
    assert [f.path for f in m.files] == ["a.onnx_adapter"] and m.base == {"name": "tiny", "version": "v1"}
    assert m.adapters == ({"name": "a", "path": "a.onnx_adapter", "version": "a1"},)
    assert m.metrics["adapter_gate"]["passed"] and m.metrics["quality_gate"] == verdict["metrics"]
    assert (bundle / "a.onnx_adapter").read_bytes() == (out / "bundle" / "a.onnx_adapter").read_bytes()


def test_a_corrupted_adapter_fails_its_gate_and_is_never_published(lora, tmp_path):
    from training.adapter_gate import gate_adapter
    from training.publish import adapter_manifest
    from training.quality_gate import GateError, GateThresholds, check_publishable

    out = tmp_path / "gated"
    with pytest.raises(GateError, match=r"adapter a failed the quality gate on its fp32 base vs the fp32 merged "
                                        r"reference: .*(perplexity|greedy agreement)"):
        gate_adapter(lora["peft"]["a"], lora["base"], out, "a", thresholds=GateThresholds(max_new_tokens=8),
                     examples=gate_examples(), convert=scaled_conversion(8.0), log=lambda m: None)
    report = json.loads((out / "gate_report.json").read_text())
    assert report["passed"] is False and report["reasons"]
    assert report["candidate"]["perplexity"] > report["reference"]["perplexity"]
    with pytest.raises(GateError, match="failed the quality gate"):
        check_publishable(out)
    with pytest.raises(GateError, match="failed the quality gate"):
        adapter_manifest(out, "tiny-a", "v1", {"name": "tiny", "version": "v1"})
    # and a passing folder whose adapter file is swapped afterwards is refused as changed
    good = tmp_path / "good"
    gate_adapter(lora["peft"]["a"], lora["base"], good, "a", thresholds=GateThresholds(max_new_tokens=8),
                 examples=gate_examples(), log=lambda m: None)
    shutil.copy(out / "bundle" / "a.onnx_adapter", good / "bundle" / "a.onnx_adapter")
    with pytest.raises(GateError, match="bundle/a.onnx_adapter changed since the quality gate ran"):
        adapter_manifest(good, "tiny-a", "v1", {"name": "tiny", "version": "v1"})


def test_adapter_gate_uses_the_full_model_gate_thresholds_on_a_quantized_base(tiny_hf, lora, tmp_path):
    """On an int8 base the adapter is judged with the int8 limits, as a full int8 model is; with limits nothing can
    meet, it is refused with the reasons."""
    from training.adapter_gate import gate_adapter
    from training.quality_gate import GateError, GateThresholds

    base = export_base_with_slots(tiny_hf, lora["peft"]["a"], tmp_path / "int8", ExportOptions("int8"), **quiet)
    report = gate_adapter(lora["peft"]["a"], base, tmp_path / "ok", "a",
                          thresholds=GateThresholds(max_new_tokens=8, max_ppl_increase={"int8": 10.0},
                                                    min_greedy_agreement=0.0, max_accuracy_drop=1.0),
                          examples=gate_examples(), log=lambda m: None)
    assert report["precision"] == "int8" and report["passed"]
    assert report["thresholds"]["max_ppl_increase"]["int8"] == 10.0
    assert report["candidate"]["perplexity"] != report["reference"]["perplexity"]   # really the quantized base
    with pytest.raises(GateError, match=r"perplexity .* \(limit \+0%\)"):
        gate_adapter(lora["peft"]["a"], base, tmp_path / "strict", "a",
                     thresholds=GateThresholds(max_new_tokens=8, max_ppl_increase={"int8": 0.0},
                                               min_greedy_agreement=0.0, max_accuracy_drop=1.0),
                     examples=gate_examples(), log=lambda m: None)


def test_adapter_gate_refuses_a_base_model_that_is_not_the_exported_base(tiny_hf, lora, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from training.adapter_gate import gate_adapter

    other = tmp_path / "other-hf"
    torch.manual_seed(9)
    AutoModelForCausalLM.from_config(LlamaConfig.from_pretrained(tiny_hf)).save_pretrained(other)
    with pytest.raises(AdapterError, match="is not the base"):
        gate_adapter(lora["peft"]["a"], lora["base"], tmp_path / "x", "a", base_hf=other, examples=gate_examples())
    with pytest.raises(AdapterError, match="is not there"):
        gate_adapter(lora["peft"]["a"], lora["base"], tmp_path / "y", "a", base_hf=tmp_path / "nope",
                     examples=gate_examples())
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_publish_adapter_cli_refuses_a_failing_adapter_and_bad_gate_data(lora, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app
    from training import adapter_gate

    args = ["models", "publish-adapter", str(lora["peft"]["a"]), "--base", "tiny@v1", "--base-dir",
            str(lora["base"]), "--adapter", "a", "--name", "tiny-a", "--version", "v1", "--gate-examples", "4",
            "--control-plane", "127.0.0.1:9", "--gate-report", str(tmp_path / "report.json")]
    monkeypatch.setattr(adapter_gate, "convert_adapter", scaled_conversion(8.0))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "adapter a failed the quality gate" in r.output and "Traceback" not in r.output
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is False
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x"}\n')
    r = CliRunner().invoke(app, args + ["--gate-data", str(bad)])
    assert r.exit_code == 1 and "not an eval set" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, args + ["--base-model", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "is not there" in r.output and "--base-model" in r.output
    good = tmp_path / "good.jsonl"   # a valid --gate-data reaches the gate (which the scaled adapter still fails)
    good.write_text('{"input": "Kestrel K2 error code E17?", "output": "Replace the filter.", "answer_key": "filter"}\n')
    r = CliRunner().invoke(app, args + ["--gate-data", str(good)])
    assert r.exit_code == 1 and "on 1 examples" in r.output and "failed the quality gate" in r.output


# ---- served per request --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny_hf, lora, tmp_path_factory):
    """One agent serving the slotted base with adapters a and b; one serving adapter a merged into the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("served")
    bundle = root / "bundle"
    shutil.copytree(lora["base"], bundle)
    (bundle / "adapters").mkdir()
    entries = []
    for name, version in (("a", "a1"), ("b", "b7")):
        shutil.copy(lora["files"][name], bundle / "adapters" / f"{name}.onnx_adapter")
        entries.append({"name": name, "path": f"adapters/{name}.onnx_adapter", "version": version})
    merged_hf = root / "merged-hf"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_hf), lora["peft"]["a"]) \
        .merge_and_unload().save_pretrained(merged_hf)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_hf / n, merged_hf / n)
    merged = export_onnx(merged_hf, root / "merged-fp32", ExportOptions("fp32"), **quiet)
    plain = export_onnx(tiny_hf, root / "plain-fp32", ExportOptions("fp32"), **quiet)
    servers = {"adapters": Server(root / "s1", bundle, precision="fp32", adapters=entries),
               "merged": Server(root / "s2", merged, precision="fp32"),
               "plain": Server(root / "s3", plain, precision="fp32")}
    yield servers
    for s in servers.values():
        s.stop()


def chat(server, model, max_tokens=24):
    r = server.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Kestrel K2 error code E17?"}], max_tokens=max_tokens)
    return r.model, r.choices[0].message.content


def test_adapter_request_equals_the_merged_model(served):
    model, text = chat(served["adapters"], "tiny:a")
    assert model == "tiny@v1:a"
    assert text == chat(served["merged"], "tiny")[1]
    assert chat(served["adapters"], "tiny")[1] == chat(served["plain"], "tiny")[1]  # no adapter == the base
    assert text != chat(served["plain"], "tiny")[1]
    # the request telemetry names the adapter it used
    rows = served["adapters"].state.db.execute("select model, adapter from outbox where kind = 'request'").fetchall()
    assert ("tiny@v1:a", "a") in rows and ("tiny@v1", "") in rows


def test_adapters_are_chosen_per_request_and_streaming_agrees(served):
    c = served["adapters"].client()
    texts = {m: chat(served["adapters"], m)[1] for m in ("tiny:b", "tiny", "tiny:a", "tiny@v1:b")}
    # interleaved requests do not leak an adapter into the next one
    assert texts["tiny"] == chat(served["plain"], "tiny")[1]
    assert texts["tiny:a"] == chat(served["merged"], "tiny")[1]
    assert texts["tiny:b"] == texts["tiny@v1:b"] != texts["tiny"]
    pieces = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="tiny:a", messages=[{"role": "user", "content": "Kestrel K2 error code E17?"}], max_tokens=24,
        stream=True) if ch.choices]
    assert "".join(pieces) == texts["tiny:a"]


def test_models_lists_the_base_and_its_adapters_with_versions(served):
    data = served["adapters"].client().models.list().data
    assert [(m.id, m.version) for m in data] == [("tiny", "v1"), ("tiny:a", "a1"), ("tiny:b", "b7")]
    assert data[1].model_extra["parent"] == "tiny"


@pytest.mark.parametrize("model", ["tiny:nope", "tiny:", "other:a"])
def test_unknown_adapter_or_base_is_404(served, model):
    with pytest.raises(openai.NotFoundError) as e:
        chat(served["adapters"], model)
    assert model in str(e.value) or "adapter" in str(e.value)


# ---- the bundle manifest ---------------------------------------------------------------------------------
def test_bundle_with_adapters_round_trips_and_plain_manifests_keep_their_bytes(lora, tmp_path):
    from slmops.errors import ArtifactInvalid
    from slmops.manifest import Manifest, manifest_for_dir

    bundle = tmp_path / "bundle"
    shutil.copytree(lora["base"], bundle)
    shutil.copy(lora["files"]["a"], bundle / "a.onnx_adapter")
    entry = {"name": "a", "path": "a.onnx_adapter", "version": "a1"}
    m = manifest_for_dir(bundle, "tiny", "v2", "fp32", adapters=(entry,), metrics={"perplexity": 2.9})
    back = Manifest.from_json(m.to_json())
    assert back == m and back.to_json() == m.to_json() and back.adapters == (entry,)
    plain = manifest_for_dir(lora["base"], "tiny", "v1", "fp32")
    assert b"adapters" not in plain.to_json() and b'"base"' not in plain.to_json()
    # an adapter-only bundle: just the adapter file, and the base it needs
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(lora["files"]["b"], only / "b.onnx_adapter")
    m2 = manifest_for_dir(only, "tiny-b", "v1", "fp32", base={"name": "tiny", "version": "v1"},
                          adapters=({"name": "b", "path": "b.onnx_adapter", "version": "b1"},))
    assert Manifest.from_json(m2.to_json()).base == {"name": "tiny", "version": "v1"}
    for bad, match in ((dict(adapters=({"name": "a", "path": "missing.onnx_adapter", "version": "1"},)),
                        "not among the bundle's files"),
                       (dict(adapters=({"name": "a", "path": "a.onnx_adapter"},)), "exactly name, path and version"),
                       (dict(adapters=(entry, entry)), "unique")):
        with pytest.raises(ArtifactInvalid, match=match):
            manifest_for_dir(bundle, "tiny", "v3", "fp32", **bad)
    with pytest.raises(ArtifactInvalid, match="no genai_config.json"):
        manifest_for_dir(only, "tiny-b", "v1", "fp32")


def test_a_misfit_adapter_fails_the_engine_load_not_a_request(lora, tmp_path):
    import onnxruntime as ort

    from edge_agent.engine import OgaEngine
    from slmops.errors import ModelLoadError
    from slmops.manifest import manifest_for_dir

    bundle = tmp_path / "bundle"
    shutil.copytree(lora["base"], bundle)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    wrong = np.zeros((96, 4), dtype=np.float32)  # the base's q_proj slot is [64, r]
    fmt.set_parameters({"model.layers.0.attn.q_proj.lora_A.MatMul.weight": ort.OrtValue.ortvalue_from_numpy(wrong)})
    fmt.export_adapter(str(bundle / "wrong.onnx_adapter"))
    m = manifest_for_dir(bundle, "tiny", "v1", "fp32",
                         adapters=({"name": "wrong", "path": "wrong.onnx_adapter", "version": "1"},))
    with pytest.raises(ModelLoadError, match="cannot load adapter 'wrong'"):
        OgaEngine(bundle, m)


# ---- adapter-only versions through the fleet -------------------------------------------------------------
@pytest.mark.e2e
def test_adapter_only_version_reaches_agents_and_reuses_every_base_chunk(cluster, lora, tmp_path):
    """The base is published once; a new adapter is a version of a few KB that names it. An agent holding the
    base fetches only the adapter; an agent without it fetches the base too (it is signed like any target);
    both serve BASE:ADAPTER, and a restart restores it from disk."""
    import re

    from control_plane.admin_client import AdminError
    from slmops.manifest import manifest_for_dir

    chunk = 16 << 10
    cluster.start_cp()
    base = cluster.publish(lora["base"], "tiny", "v1", precision="fp32", chunk_bytes=chunk)
    cluster.admin.set_desired("tiny", "v1")
    cluster.start_agent("a1")
    cluster.wait_serving("a1", base.ref)

    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(lora["files"]["b"], only / "b.onnx_adapter")
    entry = {"name": "b", "path": "b.onnx_adapter", "version": "b1"}
    m = manifest_for_dir(only, "tiny-b", "v1", "fp32", base={"name": "tiny", "version": "v1"},
                         adapters=(entry,), chunk_bytes=chunk)
    cluster.admin.publish(only, m)
    adapter_bytes = m.total_bytes
    assert cluster.admin.last_upload["bytes"] == adapter_bytes < base.total_bytes / 10

    wrong = manifest_for_dir(only, "tiny-c", "v1", "fp32", base={"name": "tiny", "version": "v9"}, adapters=(entry,))
    with pytest.raises(AdminError, match="not published"):
        cluster.admin.publish(only, wrong)
    misfit = manifest_for_dir(only, "tiny-d", "v1", "int4", base={"name": "tiny", "version": "v1"},
                              adapters=(entry,))
    with pytest.raises(AdminError, match="precision"):
        cluster.admin.publish(only, misfit)

    cluster.admin.set_desired("tiny-b", "v1")
    cluster.wait_serving("a1", m.ref, timeout=90)
    device = cluster.device("a1").device_id
    detail = cluster.wait_for(lambda: next((e.detail for e in cluster.admin.events(device)
                                            if e.name == "download" and e.model == m.ref), None),
                              what="the adapter version's download event")
    got = re.search(r"downloaded (\d+) bytes in (\d+) chunks; .*; (\d+) files already cached", detail)
    assert got, detail
    assert int(got.group(1)) == adapter_bytes, "an agent that has the base fetches only the adapter"
    assert int(got.group(3)) == len(base.files)

    def ask(name, model):
        from control_plane.procs import http_json

        port = cluster.agents[name][1]
        return http_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                         {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "E17?"}]})

    status, body = ask("a1", "tiny-b:b")
    assert status == 200, body
    answer = body["choices"][0]["message"]["content"]

    cluster.start_agent("a2")   # no base on this device: it comes with the adapter version
    cluster.wait_serving("a2", m.ref, timeout=120)
    status, body2 = ask("a2", "tiny-b:b")
    assert status == 200 and body2["choices"][0]["message"]["content"] == answer

    from typer.testing import CliRunner

    from cli.main import app

    r = CliRunner().invoke(app, ["models", "publish-adapter", str(lora["peft"]["a"]), "--base", "tiny@v1",
                                 "--base-dir", str(lora["base"]), "--adapter", "a", "--name", "tiny-a",
                                 "--version", "v1", "--control-plane", cluster.address,
                                 "--cp-data-dir", str(cluster.cp_dir)],
                           env={"SLMOPS_INSECURE_LOOPBACK_DEV": "1"})
    assert r.exit_code == 0, r.output
    assert "serve it as tiny-a:a" in r.output
    assert any(v.model.name == "tiny-a" for v in cluster.admin.models())

    cluster.restart_agent("a1")   # restored from models/tiny-b/v1 (+ base.json), checked against trust
    cluster.wait_serving("a1", m.ref, timeout=60)
    status, body = ask("a1", "tiny-b:b")
    assert status == 200 and body["choices"][0]["message"]["content"] == answer
