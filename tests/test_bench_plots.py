"""bench/make_plots.py on a small synthetic results folder: every plot is written from its input, and a
missing or too-old input is skipped with a message instead of failing."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def make_plots():
    spec = importlib.util.spec_from_file_location("make_plots", ROOT / "bench" / "make_plots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def synthetic(results: pathlib.Path) -> None:
    results.mkdir()
    w = lambda name, doc: (results / name).write_text(json.dumps(doc))  # noqa: E731
    w("serving.json", {"tokens": 64, "engines": [
        {"engine": "agent HTTP, int4", "first_token_ms": 69, "decode_tok_s": 167.8, "tokens": 64},
        {"engine": "onnxruntime-genai in-process, int4", "first_token_ms": 33, "decode_tok_s": 207.9, "tokens": 64}],
        "concurrency": [{"clients": 1, "total_tok_s": 142}, {"clients": 2, "total_tok_s": 147}]})
    w("swap-tiny.json", {"model": "tiny", "clients": 2, "requests": 4, "failed": 1, "desired_to_serving_s": 1.5,
                         "timeline": [[-1.0, 60, 200, "m@v1"], [0.2, 300, 200, "m@v1"], [0.9, 80, 503, ""],
                                      [2.0, 61, 200, "m@v2"]]})
    w("swap.json", {"model": "old", "clients": 4, "requests": 10, "failed": 0})  # written before the timeline
    samples = [{"t_s": 5.0 * i, "rss_mb": 150 + 0.01 * i, "uss_mb": 90.0, "requests": 10, "failed": 0,
                "p95_ms": 80.0 if i else None} for i in range(30)]
    w("soak-tiny.json", {"model": "tiny", "clients": 3, "minutes": 2.5, "requests": 290, "failed": 0,
                         "sample_s": 5.0, "samples": samples,
                         "trend": {"warmup_s": 30, "slope_mb_per_min": 0.12, "verdict": "no growth trend"}})
    w("demo.json", {"stages": [
        {"stage": "base", "label": "base", "fp32_accuracy": 0.0, "shipped_accuracy": 0.0, "shipped_precision": "int8",
         "shipped_mb": 270.5, "fp32_examples": 26, "gate_examples": 13},
        {"stage": "tuned", "label": "+ LoRA", "fp32_accuracy": 0.654, "shipped_accuracy": 0.538, "shipped_precision": "int8",
         "shipped_mb": 270.5, "fp32_examples": 26, "gate_examples": 13}],
        "fleet": {"acc_before": 0.0, "acc_after": 0.615, "questions": 26}})
    w("prompt-lengths-tiny.json", {"model": "tiny", "max_tokens": 64, "agent_prompt_limit": 511, "lengths": [
        {"prompt_tokens": n, "first_token_ms": n / 10, "total_ms": n / 5, "decode_tok_s": 500 - n / 2}
        for n in (36, 128, 506)]})


def test_every_plot_from_synthetic_results(tmp_path, capsys):
    synthetic(tmp_path / "results")
    out = tmp_path / "img"
    assert make_plots().main(["--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["accuracy-per-stage.png", "prompt-lengths-tiny.png", "serving-engines.png",
                       "soak-rss-tiny.png", "swap-latency-tiny.png"]
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in written)
    assert "skipped swap: swap.json has no per-request timeline" in text
    assert "5 plots written" in text and "1 skipped" in text


def test_missing_inputs_are_skipped_with_the_command(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert make_plots().main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "img")]) == 0
    text = capsys.readouterr().out
    assert "0 plots written" in text
    for hint in ("bench/bench_serving.py", "bench/collect_demo.py", "bench/bench_soak.py", "bench/bench_swap.py",
                 "bench/bench_prompt_lengths.py"):
        assert hint in text
    assert not (tmp_path / "img").exists() or not list((tmp_path / "img").glob("*.png"))
