"""Distillation components on tiny models: the degenerate-output check, students from a teacher (which layers),
the KD loss with its hidden-state term, gold answers next to the teacher's, and a seeded run that repeats exactly."""
import json
import pathlib

import pytest
import torch

from slmops.errors import ConfigError
from training.dataset import Template, load_jsonl, tokenize
from training.distill import (
    DistillSettings,
    as_examples,
    by_influence,
    choose_layers,
    degenerate_reason,
    distill_loss,
    evenly_spaced,
    first_and_last,
    layer_influence,
    student_from_config,
    student_from_teacher,
    teacher_outputs,
    vocabularies_match,
)
from training.loader import load_model
from training.recipe import load
from training.run_distill import with_gold
from training.runner import run_recipe
from training.tiny import DATA_DIR
from training.trainer import TrainSettings, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def teacher(cache):
    model, tok, _ = load_model({"source": "tiny", "tiny": {"hidden": 64, "layers": 4, "steps": 60}}, cache)
    return model, tok


@pytest.mark.parametrize("text, reason", [("", "empty"), ("   ", "empty"),
                                          ("the same the same the same the same the same the same", "repetitive"),
                                          ("!!!!!!!!!!!!!!!!!!!!", "repetitive"),
                                          ("Error E17 means the SD card is full.", None)])
def test_degenerate_outputs_are_named(text, reason):
    assert degenerate_reason(text) == reason


def test_teacher_outputs_are_checked_and_counted(teacher, monkeypatch):
    model, tok = teacher
    ex = load_jsonl(DATA_DIR / "support_train.jsonl")[:6]
    import training.distill as d
    from training.generation import Generated

    fake = [Generated("fine answer here", 3, True), Generated("", 0, True),
            Generated("a b c a b c a b c a b c a b c", 15, False)] * 2
    monkeypatch.setattr(d, "generate", lambda *a, **k: fake)
    kept, counts = teacher_outputs(model, tok, Template.parse("chatml"), ex, DistillSettings(keep_layers=2))
    assert counts == {"kept": 2, "dropped": {"empty": 2, "repetitive": 2}, "total": 6}
    assert kept[0] == {"input": ex[0].messages[0]["content"], "teacher_output": "fine answer here",
                       "answer_key": ex[0].answer_key}


def test_real_teacher_generation_writes_inputs_and_answers(teacher):
    model, tok = teacher
    ex = load_jsonl(DATA_DIR / "support_train.jsonl")[:4]
    kept, counts = teacher_outputs(model, tok, Template.parse("chatml"), ex,
                                   DistillSettings(keep_layers=2, max_new_tokens=8))
    assert counts["total"] == 4 and counts["kept"] + sum(counts["dropped"].values()) == 4
    assert all(set(r) >= {"input", "teacher_output"} for r in kept)


def test_layers_kept_are_evenly_spaced():
    kept = evenly_spaced(30, 15)
    assert len(kept) == 15 and kept[0] == 0 and kept[-1] == 29 and kept == sorted(set(kept))
    assert all(2 <= b - a <= 3 for a, b in zip(kept, kept[1:]))  # no long gap anywhere
    assert evenly_spaced(4, 2) == [0, 3]
    with pytest.raises(ConfigError, match="fewer than"):
        evenly_spaced(4, 4)


def test_student_from_dropped_layers_copies_the_teacher(teacher, tmp_path):
    model, tok = teacher
    student, kept = student_from_teacher(model, 2)
    assert kept == [0, 3] and student.config.num_hidden_layers == 2
    t, s = model.state_dict(), student.state_dict()
    assert torch.equal(s["model.layers.1.self_attn.q_proj.weight"], t["model.layers.3.self_attn.q_proj.weight"])
    assert torch.equal(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"])
    student.save_pretrained(tmp_path / "s")  # saves and reloads like any model
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)


def test_other_layer_choices(teacher):
    model, tok = teacher
    assert first_and_last(30, 15) == list(range(14)) + [29]
    assert by_influence([0.5, 0.1, 0.3, 0.2, 0.0, float("inf")], 4) == [0, 2, 3, 5]  # first, last, most changing
    rows = tokenize(load_jsonl(DATA_DIR / "support_train.jsonl")[:8], Template.parse("chatml"), tok, 256)
    infl = layer_influence(model, rows, tok.pad_token_id)
    assert len(infl) == 4 and all(0 <= x < 2 for x in infl[:3]) and infl[3] == float("inf")
    chosen = choose_layers(model, DistillSettings(keep_layers=3, layer_choice="influence"), rows, tok.pad_token_id)
    assert len(chosen) == 3 and chosen[0] == 0 and chosen[-1] == 3
    assert choose_layers(model, DistillSettings(layers=[1, 3])) == [1, 3]
    assert choose_layers(model, DistillSettings(keep_layers=2, layer_choice="first")) == [0, 3]
    student, kept = student_from_teacher(model, [1, 3])
    assert kept == [1, 3] and torch.equal(student.state_dict()["model.layers.0.mlp.up_proj.weight"],
                                          model.state_dict()["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(ConfigError, match="index into"):
        choose_layers(model, DistillSettings(layers=[0, 4]))
    with pytest.raises(ConfigError, match="index into"):
        student_from_teacher(model, [0, 1, 2, 3])


def test_student_from_config(teacher):
    model, _ = teacher
    student = student_from_config(model, {"num_hidden_layers": 1, "intermediate_size": 128})
    assert student.config.num_hidden_layers == 1 and vocabularies_match(model, student)
    with pytest.raises(ConfigError, match="not in the teacher's config"):
        student_from_config(model, {"n_layers": 1})


def test_distill_settings_need_one_student():
    with pytest.raises(ConfigError, match="exactly one"):
        DistillSettings()
    with pytest.raises(ConfigError, match="kl_weight"):
        DistillSettings(keep_layers=2, kl_weight=2)
    assert DistillSettings(layers=[0, 2, 5]).keep_layers == 3
    with pytest.raises(ConfigError, match="names 2"):
        DistillSettings(keep_layers=3, layers=[0, 5])
    with pytest.raises(ConfigError, match="increasing"):
        DistillSettings(layers=[3, 1])
    with pytest.raises(ConfigError, match="layer_choice"):
        DistillSettings(keep_layers=2, layer_choice="random")
    with pytest.raises(ConfigError, match="hidden_weight needs"):
        DistillSettings(student_config={"num_hidden_layers": 1}, hidden_weight=1.0)


def test_gold_answers_replace_teacher_answers_that_miss_the_key():
    ex = load_jsonl(DATA_DIR / "support_train.jsonl")[:3]
    right = {"input": ex[0].messages[0]["content"], "teacher_output": "Yes: " + ex[0].answer_key,
             "answer_key": ex[0].answer_key}
    wrong = {"input": ex[1].messages[0]["content"], "teacher_output": "something else", "answer_key": ex[1].answer_key}
    both, changed = with_gold(as_examples([right, wrong], "t"), ex)  # ex[2]: dropped in stage 1, so gold
    assert [e.target for e in both] == [right["teacher_output"], ex[1].target, ex[2].target] and changed == 2


def test_distillation_loss_goes_down(teacher, tmp_path):
    model, tok = teacher
    model.requires_grad_(False)
    records = [{"input": e.messages[0]["content"], "teacher_output": e.target}
               for e in load_jsonl(DATA_DIR / "support_train.jsonl")]
    rows = tokenize(as_examples(records, "t"), Template.parse("chatml"), tok, 256)
    student, kept = student_from_teacher(model, 2)
    r = train(student, rows, [], TrainSettings(lr=3e-3, max_steps=12, batch_size=8), tmp_path, tok.pad_token_id,
              loss_fn=distill_loss(model, kl_weight=0.5, temperature=2.0, hidden_weight=1.0, layers=kept),
              progress=False, log=lambda *a: None)
    assert r.last_loss < r.first_loss * 0.8, r.losses
    log = [json.loads(ln) for ln in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert log[-1]["kl"] >= 0 and log[-1]["ce"] > 0  # every part is logged
    assert all(0 <= e["hidden"] < 10 for e in log)
    with pytest.raises(ConfigError, match="layers the student"):
        distill_loss(model, 0.5, 2.0, hidden_weight=1.0)


def test_hidden_loss_is_zero_for_the_teacher_itself(teacher):
    model, tok = teacher
    rows = tokenize(load_jsonl(DATA_DIR / "support_train.jsonl")[:4], Template.parse("chatml"), tok, 256)
    from training.dataset import collate

    batch = collate(rows, tok.pad_token_id)
    loss, parts = distill_loss(model, 0.5, 2.0, hidden_weight=1.0, layers=[0, 1, 2, 3])(model, batch)
    assert parts["hidden"] == pytest.approx(0, abs=1e-6) and parts["kl"] == pytest.approx(0, abs=1e-4)


def test_seeded_distillation_repeats_exactly_and_records_its_seed(teacher, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    metrics = []
    for run in ("a", "b"):  # the module's tiny teacher (same tiny spec, same cache), so none is trained here
        r = load(ROOT / "training/recipes/distill_tiny.yaml",
                 [f"cache_dir={cache}", "base.tiny.steps=60", "train.max_steps=4", "train.eval_every=2", "train.seed=3",
                  "distill.max_new_tokens=8", "distill.gen_temperature=0.8", "distill.hidden_weight=0.5",
                  "distill.gold_answers=true", "eval.latency_prompts=0", "eval.max_new_tokens=8"],
                 output=str(tmp_path / run))
        run_recipe(r, progress=False, log=lambda *a, **k: None)
        lin = json.loads((tmp_path / run / "lineage.json").read_text())
        metrics.append((lin["metrics"]["train"]["first_loss"], lin["metrics"]["train"]["last_loss"],
                        lin["metrics"]["eval"], (tmp_path / run / "teacher" / "train.jsonl").read_text()))
        assert lin["seeds"]["seed"] == 3 and "teacher sampling" in lin["seeds"]["uses"]
        assert lin["metrics"]["train_records"]["gold"] >= 0 and lin["metrics"]["student_layers"] == [0, 3]
    assert metrics[0] == metrics[1]
