"""Evaluation metrics and the side-by-side report."""
import json

import pytest

from training.dataset import Template, load_jsonl
from training.evaluate import EvalResult, evaluate, is_correct, rouge_l, write_report
from training.tiny import DATA_DIR


def test_rouge_l():
    assert rouge_l("the sd card is full", "the sd card is full") == 1.0
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0
    # LCS "the card full" (3) of 4 and 5 words: P=3/4, R=3/5
    assert rouge_l("the card is_not full", "the sd card is full") == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_task_accuracy_is_case_insensitive_containment():
    assert is_correct("Error E17 means the SD card is full.", "sd card")
    assert not is_correct("E17 is bad", "SD card")


def test_evaluate_a_tiny_model(tiny_hf):
    from training.loader import load_model

    model, tok, _ = load_model(str(tiny_hf))
    held = load_jsonl(DATA_DIR / "support_heldout.jsonl")[:4]
    r = evaluate("tiny", model, tok, Template.parse("chatml"), held, max_new_tokens=8, latency_prompts=1)
    assert r.n == 4 and 0 <= r.task_accuracy <= 1 and 0 <= r.rouge_l <= 1 and r.perplexity > 1
    assert r.params > 0 and r.weights_mb > 0 and r.peak_rss_mb > 0 and r.latency_ms > 0
    assert len(r.samples) == 4 and set(r.samples[0]) == {"input", "answer", "key", "correct"}


def test_report_puts_models_side_by_side(tmp_path):
    def res(name, acc, params):
        return EvalResult(name, 10.0, acc, 0.5, 100.0, 20.0, params, 1.0, 100.0, 4, [])

    report = write_report(tmp_path, [res("teacher", 0.8, 100), res("student", 0.6, 50)], [("student", "teacher")])
    c = report["comparisons"][0]
    assert c["accuracy_delta_points"] == -20.0 and c["accuracy_retained"] == 0.75 and c["params_ratio"] == 0.5
    assert json.loads((tmp_path / "eval_report.json").read_text()) == report
    text = (tmp_path / "eval_report.txt").read_text()
    assert "teacher" in text and "student vs teacher" in text
