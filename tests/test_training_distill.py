"""Distillation components on tiny models: the degenerate-output check, students from a teacher, the KD loss."""
import pytest
import torch

from slmops.errors import ConfigError
from training.dataset import Template, load_jsonl, tokenize
from training.distill import (
    DistillSettings,
    as_examples,
    degenerate_reason,
    distill_loss,
    evenly_spaced,
    student_from_config,
    student_from_teacher,
    teacher_outputs,
    vocabularies_match,
)
from training.loader import load_model
from training.tiny import DATA_DIR
from training.trainer import TrainSettings, train


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    model, tok, _ = load_model({"source": "tiny", "tiny": {"hidden": 64, "layers": 4, "steps": 60}},
                               tmp_path_factory.mktemp("cache"))
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


def test_distillation_loss_goes_down(teacher, tmp_path):
    model, tok = teacher
    model.requires_grad_(False)
    records = [{"input": e.messages[0]["content"], "teacher_output": e.target}
               for e in load_jsonl(DATA_DIR / "support_train.jsonl")]
    rows = tokenize(as_examples(records, "t"), Template.parse("chatml"), tok, 256)
    student, _ = student_from_teacher(model, 2)
    r = train(student, rows, [], TrainSettings(lr=3e-3, max_steps=12, batch_size=8), tmp_path, tok.pad_token_id,
              loss_fn=distill_loss(model, kl_weight=0.5, temperature=2.0), progress=False, log=lambda *a: None)
    assert r.last_loss < r.first_loss * 0.8, r.losses
    import json

    last = json.loads((tmp_path / "loss_log.jsonl").read_text().splitlines()[-1])
    assert last["kl"] >= 0 and last["ce"] > 0  # both parts are logged
