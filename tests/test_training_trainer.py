"""The shared training loop: full fine-tuning, schedule, accumulation, checkpointing, early stopping, resume."""
import json

import pytest
import torch

from slmops.errors import ConfigError
from training.dataset import Template, load_jsonl, tokenize
from training.loader import load_model
from training.tiny import DATA_DIR
from training.trainer import TrainSettings, lr_factor, train

QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return lambda: load_model({"source": "tiny", "tiny": {"hidden": 64, "layers": 2, "steps": 5}}, cache)


@pytest.fixture(scope="module")
def rows(weak):
    _, tok, _ = weak()
    return tokenize(load_jsonl(DATA_DIR / "support_train.jsonl"), Template.parse("chatml"), tok, 256)


def test_full_fine_tuning_loss_goes_down(weak, rows, tmp_path):
    model, tok, _ = weak()
    s = TrainSettings(lr=3e-3, max_steps=15, batch_size=8, warmup_steps=2, weight_decay=0.01)
    r = train(model, rows, rows[:8], s, tmp_path, tok.pad_token_id, **QUIET)
    assert r.last_loss < r.first_loss * 0.8, r.losses
    log = [json.loads(x) for x in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 16))


def test_accumulation_and_gradient_checkpointing_train(weak, rows, tmp_path):
    model, tok, _ = weak()
    s = TrainSettings(lr=3e-3, max_steps=6, batch_size=4, grad_accum=2, gradient_checkpointing=True)
    r = train(model, rows, [], s, tmp_path, tok.pad_token_id, **QUIET)
    assert r.last_loss < r.first_loss and r.tokens > 0
    assert model.config.use_cache  # restored for generation


def test_warmup_then_cosine():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(20)]
    assert f[0] == pytest.approx(0.25) and f[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[-1] >= 0.1


def test_epochs_decide_the_steps():
    s = TrainSettings(epochs=2, batch_size=8, grad_accum=2)
    assert s.total_steps(100, world=1) == 13 and s.total_steps(100, world=2) == 7


@pytest.mark.parametrize("kw, words", [({}, "epochs or max_steps"), ({"max_steps": 0}, "max_steps"),
                                       ({"max_steps": 5, "lr": 0}, "lr"),
                                       ({"max_steps": 5, "batch_size": 0}, "batch_size"),
                                       ({"max_steps": 5, "early_stopping_patience": 2}, "eval_every")])
def test_bad_train_settings(kw, words):
    with pytest.raises(ConfigError, match=words):
        TrainSettings(**kw)


def test_early_stopping_keeps_the_best_weights(weak, rows, tmp_path):
    model, tok, _ = weak()
    # a huge learning rate makes validation loss climb after the first evaluation
    s = TrainSettings(lr=0.5, max_steps=40, batch_size=8, eval_every=2, early_stopping_patience=2,
                      max_grad_norm=0)
    r = train(model, rows[:60], rows[60:], s, tmp_path, tok.pad_token_id, **QUIET)
    assert r.stopped_early and r.steps < 40
    from training.trainer import validation_loss

    assert validation_loss(model, rows[60:], tok.pad_token_id) == pytest.approx(r.best_val_loss, rel=1e-4)


class Crash(Exception):
    pass


def test_resume_continues_the_same_run(weak, rows, tmp_path):
    s = TrainSettings(lr=3e-3, max_steps=8, batch_size=8, save_every=2, eval_every=4, seed=3)
    straight, tok, _ = weak()
    ref = train(straight, rows, rows[:8], s, tmp_path / "straight", tok.pad_token_id, **QUIET)

    interrupted, _, _ = weak()

    def crash(step, entry):
        if step == 5:
            raise Crash()

    with pytest.raises(Crash):
        train(interrupted, rows, rows[:8], s, tmp_path / "resumed", tok.pad_token_id, on_step=crash, **QUIET)
    resumed, _, _ = weak()  # a fresh process: nothing in memory survives, only the checkpoint
    r = train(resumed, rows, rows[:8], s, tmp_path / "resumed", tok.pad_token_id, **QUIET)
    assert r.resumed_from == 4
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
    logs = [[json.loads(x)["loss"] for x in (tmp_path / d / "loss_log.jsonl").read_text().splitlines()]
            for d in ("straight", "resumed")]
    assert logs[0] == pytest.approx(logs[1], abs=1e-4) and len(logs[1]) == 8
    assert r.last_loss == pytest.approx(ref.last_loss, abs=1e-4)


def test_too_little_data_for_a_batch(weak, rows, tmp_path):
    model, tok, _ = weak()
    with pytest.raises(ConfigError, match="fewer than batch_size"):
        train(model, rows[:3], [], TrainSettings(max_steps=2, batch_size=8), tmp_path, tok.pad_token_id, **QUIET)
