"""The quality gate: a quantized variant is compared with the fp32 ONNX reference on an eval set before it may
be published, and the variant actually shipped is the first of a search order that passes: several int4
recipes, smallest first, then int8, fp16, fp32 (training/quant_recipes.py), every attempt's verdict and reasons
kept in gate_report.json.

Measured per variant through onnxruntime-genai (the runtime the device uses):
- perplexity of the reference answers (teacher-forced, answer tokens only);
- task accuracy: the greedy answer contains the example's answer_key (one without a key counts as right);
- greedy agreement: share of positions where the variant's argmax equals the reference's greedy token, fed the
  reference's greedy continuation (teacher-forced, so one early divergence does not count every later token).

The verdict is written into the variant's folder as gate.json together with the sha256 of its model files;
`check_publishable` refuses a folder whose verdict is missing, failed, or no longer matches its files.
`judge` and `quant_recipes.plan` are pure; `evaluate` and `select_precision` do the I/O.
"""
from __future__ import annotations

import hashlib
import json
import math
import pathlib
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields

from slmops.chat_format import CHATML, ChatFormat
from slmops.threads import set_threads
from slmops.yaml_text import load_yaml
from training import quant_recipes
from training.export import ExportError, ExportOptions, dir_size, export_onnx

GATE_FILE = "gate.json"
HELDOUT = pathlib.Path(__file__).parent / "data" / "support_heldout.jsonl"
UNGATED_FILES = (GATE_FILE, "gate_report.json", "manifest.json")  # written after (or about) the verdict
# Two fp32 graphs of the same weights computed differently (an adapter's LoRA branch vs the weights merged) differ
# by rounding only; more than this is a real difference.
FP32_PPL_TOLERANCE = 0.005


class GateError(Exception):
    """A variant is not publishable (no verdict, failed verdict, or files changed since the gate ran)."""


@dataclass(frozen=True)
class GateThresholds:
    """Limits relative to fp32. Perplexity limits are relative increases (0.06 = +6%); accuracy is absolute."""
    max_ppl_increase: dict = field(default_factory=lambda: {"int4": 0.06, "int8": 0.02, "fp16": 0.01})
    max_accuracy_drop: float = 0.05
    min_greedy_agreement: float = 0.80
    max_new_tokens: int = 32
    max_examples: int = 0          # 0 = the whole eval set

    def __post_init__(self) -> None:
        bad = [k for k, v in self.max_ppl_increase.items()
               if k not in ("int4", "int8", "fp16") or not isinstance(v, (int, float)) or not 0 <= v <= 10]
        if bad:
            raise ValueError(f"max_ppl_increase entries {bad} must be int4/int8/fp16 with a value in [0, 10]")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ValueError(f"max_accuracy_drop={self.max_accuracy_drop} must be in [0, 1]")
        if not 0 <= self.min_greedy_agreement <= 1:
            raise ValueError(f"min_greedy_agreement={self.min_greedy_agreement} must be in [0, 1]")
        if not 1 <= self.max_new_tokens <= 512:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be in [1, 512]")
        if self.max_examples < 0:
            raise ValueError(f"max_examples={self.max_examples} must be >= 0")

    @classmethod
    def from_mapping(cls, d: dict | None) -> GateThresholds:
        """From a recipe's `quality_gate:` section; unknown keys are refused, not ignored."""
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"quality_gate has unknown keys: {', '.join(sorted(unknown))}")
        if "max_ppl_increase" in d:
            d["max_ppl_increase"] = {**cls().max_ppl_increase, **d["max_ppl_increase"]}
        return cls(**d)


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    answer_key: str


@dataclass(frozen=True)
class Metrics:
    perplexity: float
    accuracy: float
    greedy_agreement: float
    examples: int


def load_examples(path: pathlib.Path = HELDOUT, chat: ChatFormat = ChatFormat.from_dict(CHATML),
                  limit: int = 0) -> list[Example]:
    """{input, output, answer_key} records, or chat records ({messages}, the last one the answer). A record without
    an answer_key counts as right for every variant alike, so such a set (the teacher's answers to captured
    traffic) is gated on perplexity and greedy agreement only."""
    out = []
    end = chat.stop[0] if chat.stop else ""
    for line in pathlib.Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if "messages" in r:
            prompt, answer = chat.render(r["messages"][:-1]), r["messages"][-1]["content"]
        else:
            prompt, answer = chat.render([{"role": "user", "content": r["input"]}]), r["output"]
        out.append(Example(prompt, answer + end, r.get("answer_key") or ""))
    return out[:limit] if limit else out


# ---- pure decisions ----------------------------------------------------------------------------------
def judge(precision: str, ref: Metrics, got: Metrics, t: GateThresholds) -> list[str]:
    """Reasons the variant fails (empty = passes). An fp32 variant measured apart from the reference (an adapter
    on an fp32 base vs the merged fp32 model) is held to the same limits, with FP32_PPL_TOLERANCE for perplexity."""
    if precision == "fp32" and got == ref:   # the reference itself
        return []
    reasons = []
    values = (got.perplexity, got.accuracy, got.greedy_agreement)
    if not all(math.isfinite(v) for v in values):
        return [f"non-finite metrics {values}"]
    limit = t.max_ppl_increase.get(precision, FP32_PPL_TOLERANCE)
    increase = got.perplexity / ref.perplexity - 1
    if increase > limit:
        reasons.append(f"perplexity {got.perplexity:.3f} is {increase:+.2%} vs fp32 {ref.perplexity:.3f} "
                       f"(limit +{limit * 100:g}%)")
    drop = ref.accuracy - got.accuracy
    if drop > t.max_accuracy_drop:
        reasons.append(f"accuracy {got.accuracy:.1%} dropped {drop:.1%} from fp32 {ref.accuracy:.1%} "
                       f"(limit {t.max_accuracy_drop:.0%})")
    if got.greedy_agreement < t.min_greedy_agreement:
        reasons.append(f"greedy agreement {got.greedy_agreement:.1%} is below {t.min_greedy_agreement:.0%}")
    return reasons


# ---- measurement (onnxruntime-genai) -----------------------------------------------------------------
class _Runner:
    """One exported model as the device runs it; with `adapter` (an .onnx_adapter for a base exported with LoRA
    slots) every generator runs with that adapter active, as a request for MODEL:ADAPTER does."""

    def __init__(self, model_dir: pathlib.Path, adapter: pathlib.Path | None = None):
        import onnxruntime_genai as og

        self.og = og
        cfg = og.Config(str(model_dir))
        set_threads(cfg)       # as the agent does (the count changes the speed, not the numbers)
        cfg.clear_providers()  # evaluated where the gate runs (CPU); see RUNNABLE for what a target runs
        self.model = og.Model(cfg)
        self.tokenizer = og.Tokenizer(self.model)
        genai = json.loads((pathlib.Path(model_dir) / "genai_config.json").read_text())
        eos = genai["model"].get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.adapters = None
        if adapter is not None:
            self.adapters = og.Adapters(self.model)
            self.adapters.load(str(adapter), "gate")

    def _generator(self, gp):
        g = self.og.Generator(self.model, gp)
        if self.adapters is not None:
            g.set_active_adapter(self.adapters, "gate")
        return g

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def logits(self, tokens: list[int]):
        import numpy as np

        gp = self.og.GeneratorParams(self.model)
        gp.set_search_options(max_length=len(tokens) + 1, do_sample=False)
        g = self._generator(gp)
        g.append_tokens(np.array(tokens, dtype=np.int32))
        return np.asarray(g.get_output("logits"), dtype=np.float64)[0]

    def greedy(self, tokens: list[int], max_new: int) -> list[int]:
        import numpy as np

        gp = self.og.GeneratorParams(self.model)
        gp.set_search_options(max_length=len(tokens) + max_new, do_sample=False)
        g = self._generator(gp)
        g.append_tokens(np.array(tokens, dtype=np.int32))
        out = []
        while not g.is_done():
            g.generate_next_token()
            t = int(g.get_next_tokens()[0])
            if t in self.eos:
                break
            out.append(t)
        return out

    def decode(self, tokens: list[int]) -> str:
        import numpy as np

        return self.tokenizer.decode(np.array(tokens, dtype=np.int32)) if tokens else ""


def _nll(logits, targets: list[int]) -> float:
    import numpy as np

    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), targets].sum())


def evaluate(model_dir: pathlib.Path, examples: list[Example], max_new_tokens: int = 32,
             reference_greedy: list[list[int]] | None = None,
             adapter: pathlib.Path | None = None) -> tuple[Metrics, list[list[int]]]:
    """Metrics of one exported variant (with `adapter` active, if given), and its greedy continuations (the
    reference's feed the others)."""
    import numpy as np

    r = _Runner(model_dir, adapter)
    nll, n_tok, correct, agree, agree_n, greedy_all = 0.0, 0, 0, 0, 0, []
    for i, ex in enumerate(examples):
        p, a = r.encode(ex.prompt), r.encode(ex.answer)
        lg = r.logits(p + a)
        nll += _nll(lg[len(p) - 1:len(p) + len(a) - 1], a)
        n_tok += len(a)
        greedy = r.greedy(p, max_new_tokens)
        greedy_all.append(greedy)
        correct += ex.answer_key.lower() in r.decode(greedy).lower()
        ref = reference_greedy[i] if reference_greedy is not None else greedy
        if ref:
            lg = r.logits(p + ref)
            pred = np.argmax(lg[len(p) - 1:len(p) + len(ref) - 1], axis=-1)
            agree += int((pred == np.array(ref)).sum())
            agree_n += len(ref)
    m = Metrics(perplexity=math.exp(nll / max(n_tok, 1)), accuracy=correct / max(len(examples), 1),
                greedy_agreement=agree / agree_n if agree_n else 1.0, examples=len(examples))
    return m, greedy_all


# ---- verdict files -----------------------------------------------------------------------------------
def _file_hashes(variant_dir: pathlib.Path) -> dict:
    """sha256 of every file the bundle will carry (model, tokenizer, adapters), so nothing can change after
    the gate without the verdict going stale."""
    out = {}
    for p in sorted(pathlib.Path(variant_dir).rglob("*")):
        name = p.relative_to(variant_dir).as_posix()
        if p.is_file() and name not in UNGATED_FILES:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[name] = h.hexdigest()
    return out


def write_verdict(variant_dir: pathlib.Path, precision: str, passed: bool, reasons: list[str],
                  metrics: Metrics | None, reference: Metrics | None, thresholds: GateThresholds,
                  evaluated_on: str = "cpu", recipe: str | None = None) -> dict:
    verdict = {"precision": precision, "recipe": recipe or precision, "passed": passed, "reasons": reasons, "evaluated_on": evaluated_on,
               "metrics": asdict(metrics) if metrics else None,
               "reference": asdict(reference) if reference else None,
               "thresholds": asdict(thresholds), "files": _file_hashes(variant_dir)}
    tmp = variant_dir / f".{GATE_FILE}.tmp"
    tmp.write_text(json.dumps(verdict, indent=1))
    tmp.replace(variant_dir / GATE_FILE)
    return verdict


def check_publishable(variant_dir: pathlib.Path) -> dict:
    """The passing verdict of `variant_dir`, or GateError saying why it may not be published."""
    variant_dir = pathlib.Path(variant_dir)
    p = variant_dir / GATE_FILE
    if not p.exists():
        raise GateError(f"{variant_dir} has no {GATE_FILE}: run the quality gate (`slmops export`) before "
                        f"publishing")
    try:
        verdict = json.loads(p.read_text())
    except ValueError as e:
        raise GateError(f"{p} is not valid JSON: {e}") from e
    if verdict.get("passed") is not True:
        raise GateError(f"{variant_dir} failed the quality gate ({verdict.get('precision')}): "
                        + "; ".join(verdict.get("reasons") or ["no reason recorded"]))
    now = _file_hashes(variant_dir)
    changed = sorted(k for k in set(now) | set(verdict.get("files", {})) if now.get(k) != verdict["files"].get(k))
    if changed:
        raise GateError(f"{variant_dir}: {', '.join(changed)} changed since the quality gate ran")
    return verdict


# ---- orchestration -----------------------------------------------------------------------------------
@dataclass
class Search:
    """What `search` found: the fp32 reference per eval set, the first recipe that passed (None: none did), the
    folder it was measured in and its metrics per set, and every attempt (`tried`) in order."""
    reference: dict
    chosen: quant_recipes.Recipe | None
    chosen_dir: pathlib.Path | None
    metrics: dict
    tried: list
    thresholds: GateThresholds

    def report(self, requested: str, order: list[str], **extra) -> dict:
        """gate_report.json's common part (plus `extra`): chosen precision and recipe, the order, the reference,
        every attempt, the thresholds and why the chosen one ships."""
        first = next(iter(self.reference))
        c = self.chosen
        return {"chosen": c.precision if c else None, "chosen_recipe": c.name if c else None, "requested": requested,
                **extra, "order": order, "reference": asdict(self.reference[first]), "tried": self.tried,
                "thresholds": asdict(self.thresholds), "why": _why(requested, c, self.tried)}

    def write_verdict(self, shipped: pathlib.Path, evaluated_on: str) -> dict:
        """The chosen one's passing gate.json in `shipped` (the folder that ships), its size in its attempt."""
        first = next(iter(self.reference))
        self.tried[-1]["bytes"] = dir_size(shipped)
        fp32 = self.chosen.precision == "fp32"
        return write_verdict(shipped, self.chosen.precision, True, ["fp32 is the reference"] if fp32 else [],
                             self.metrics[first], self.reference[first], self.thresholds,
                             evaluated_on=evaluated_on, recipe=self.chosen.name)


def search(order: tuple[quant_recipes.Recipe, ...], reference_dir: pathlib.Path, sets: dict[str, list[Example]],
           thresholds: GateThresholds, variant, options: dict[str, list[str]], log=print, evaluated_on: str = "cpu",
           discard=None, skip: dict[str, str] | None = None) -> Search:
    """Measures the fp32 reference on each eval set, then each recipe of `order` in turn until one is within the
    thresholds on every set (a set's name prefixes its reasons when there are several). `variant(recipe)` gives
    the folder to measure (builds it, or finds the one built); `options[name]` its builder options, recorded;
    `discard(folder)`, if given, is called on a folder that failed. A recipe whose precision the CPU does not run
    (fp16) fails without a build: the gate measures on the CPU. One that cannot be built or run fails with the
    error as its reason (verdict `error`). One in `skip` (name -> reason: the source rules it out, see
    quant_recipes.unavailable) is recorded with that reason (verdict `skipped`) and not built."""
    from training.export import RUNNABLE

    ref, ref_greedy = {}, {}
    for name, ex in sets.items():
        log(f"  gate: measuring the fp32 reference on {len(ex)} examples" + (f" of {name}" if len(sets) > 1 else "")
            + ("" if evaluated_on == "cpu" else f" ({evaluated_on})"))
        ref[name], ref_greedy[name] = evaluate(reference_dir, ex, thresholds.max_new_tokens)
        log(f"  gate: fp32 perplexity {ref[name].perplexity:.3f}, accuracy {ref[name].accuracy:.1%}")
    tried = []
    for recipe in order:
        p = recipe.precision
        if recipe.name in (skip or {}):
            tried.append({"recipe": recipe.name, "precision": p, "passed": False, "verdict": "skipped",
                          "reasons": [skip[recipe.name]], "options": options.get(recipe.name),
                          "evaluated_on": evaluated_on, "metrics": None, "sets": {}, "bytes": None})
            log(f"  gate: {_label(recipe.name, p)} skipped: {skip[recipe.name]}")
            continue
        vdir, got, verdict = None, {}, "failed"
        try:
            if p not in RUNNABLE["cpu"]:
                raise ExportError(f"{p} has no CPU twin, so it cannot be measured on the CPU where the gate runs")
            vdir = reference_dir if p == "fp32" else pathlib.Path(variant(recipe))
            got = {name: ref[name] if p == "fp32" else
                   evaluate(vdir, ex, thresholds.max_new_tokens, ref_greedy[name])[0] for name, ex in sets.items()}
            reasons = [f"{name}: {r}" if len(sets) > 1 else r
                       for name in sets for r in judge(p, ref[name], got[name], thresholds)]
        except Exception as e:  # a variant that cannot even be built or run here fails, with the reason
            got, reasons, verdict = {}, [f"could not be evaluated on the CPU: {type(e).__name__}: {e}"], "error"
        passed = not reasons
        tried.append({"recipe": recipe.name, "precision": p, "passed": passed,
                      "verdict": "passed" if passed else verdict, "reasons": reasons,
                      "options": options.get(recipe.name), "evaluated_on": evaluated_on,
                      "metrics": asdict(got[next(iter(sets))]) if got else None,
                      "sets": {name: asdict(m) for name, m in got.items()},
                      "bytes": dir_size(vdir) if vdir else None})
        log(f"  gate: {_label(recipe.name, p)} {'PASSED' if passed else 'failed: ' + '; '.join(reasons)}"
            + ("" if evaluated_on == "cpu" else f" ({evaluated_on})"))
        if passed:
            return Search(ref, recipe, vdir, got, tried, thresholds)
        if discard is not None and vdir is not None and p != "fp32":
            discard(vdir)
    return Search(ref, None, None, {}, tried, thresholds)


def select_precision(hf_dir: pathlib.Path, out_dir: pathlib.Path, first: str = "int4",
                     options: ExportOptions = ExportOptions("fp32"), thresholds: GateThresholds = GateThresholds(),
                     examples: list[Example] | None = None, build=export_onnx, log=print,
                     int4_recipes: tuple[str, ...] | None = None, max_attempts: int = quant_recipes.MAX_ATTEMPTS
                     ) -> dict:
    """Exports fp32 (the reference) and then each recipe of the search from `first` — the int4 recipes
    (`int4_recipes`, default quant_recipes.DEFAULT_INT4, smallest first), then int8, fp16, fp32, at most
    `max_attempts` — until one passes; that one is moved to `out_dir` with its gate.json. Returns the gate report
    (also written to out_dir/gate_report.json), whose `tried` lists every attempt: recipe, precision, bytes,
    metrics, verdict and reasons. A recipe the builder cannot honour is refused before anything is built.
    `build(hf_dir, dest, options, log=)` is the export seam.

    The gate measures on the CPU. For a cuda/dml target each recipe is measured on its CPU twin (same
    weights and quantization, CPU graph; a GPU graph may not even load on a CPU) and the target build is
    made only for the recipe that passed; fp16 has no CPU twin, so it cannot pass here."""
    hf_dir, out_dir = pathlib.Path(hf_dir), pathlib.Path(out_dir)
    if out_dir.exists():
        raise ExportError(f"{out_dir} already exists; refusing to overwrite an export")
    target = options.execution_provider
    skip = quant_recipes.unavailable(hf_dir, int4_recipes)   # a gguf_exact for a folder with no GGUF: skipped
    order = quant_recipes.plan(first, target, int4_recipes, max_attempts, skip=skip)
    tied = quant_recipes.ties_embeddings(hf_dir)
    # every recipe's options are made (and a bad one refused) before any work; fp32 is always the reference
    recipe_options = {"fp32": quant_recipes.RECIPES["fp32"].options(options, tied)}
    recipe_options.update({r.name: r.options(options, tied) for r in order})
    examples = examples if examples is not None else load_examples(limit=thresholds.max_examples)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.gate.", dir=out_dir.parent))
    try:
        def variant(name: str, ep: str) -> pathlib.Path:
            opts = ExportOptions(**{**recipe_options[name].__dict__, "execution_provider": ep})
            return build(hf_dir, work / f"{name}-{ep}", opts, log=log)

        ref_dir = variant("fp32", "cpu")
        evaluated_on = "cpu" if target == "cpu" else "cpu twin"
        found = search(order, ref_dir, {"examples": examples}, thresholds, lambda r: variant(r.name, "cpu"),
                       {n: o.describe()["builder_options"] for n, o in recipe_options.items()}, log=log,
                       evaluated_on=evaluated_on, discard=lambda d: shutil.rmtree(d, ignore_errors=True), skip=skip)
        # a search of several 100 MB variants keeps one at a time (discard); the target's build only of the one
        report = found.report(first, [r.name for r in order], execution_provider=target,
                              max_attempts=max_attempts, reference_bytes=dir_size(ref_dir))
        if found.chosen is None:
            raise GateError(f"nothing passed the quality gate in {len(order) - len(skip)} attempts: {report['why']}")
        shipped = found.chosen_dir if target == "cpu" else variant(found.chosen.name, target)
        found.write_verdict(shipped, evaluated_on)
        (shipped / "gate_report.json").write_text(json.dumps(report, indent=1))
        shipped.rename(out_dir)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _label(name: str, precision: str) -> str:
    return precision if name == precision else f"{precision} ({name})"


def _why(first: str, chosen: quant_recipes.Recipe | None, tried: list[dict]) -> str:
    failed = [f"{_label(t['recipe'], t['precision'])} failed ({'; '.join(t['reasons'])})"
              for t in tried if not t["passed"] and t["verdict"] != "skipped"]
    skipped = [f"{_label(t['recipe'], t['precision'])} ({'; '.join(t['reasons'])})"
               for t in tried if t["verdict"] == "skipped"]
    tail = f"; skipped: {', '.join(skipped)}" if skipped else ""
    if chosen is not None and chosen.precision == first and not failed:
        return f"{_label(chosen.name, chosen.precision)} was requested and passed the gate{tail}"
    head = ", ".join(failed) if failed else f"{first} was skipped"
    return (f"{head}; {_label(chosen.name, chosen.precision)} is the first in the search order that passed{tail}"
            if chosen else head + tail)


def from_recipe(path: pathlib.Path) -> tuple[pathlib.Path, dict, GateThresholds]:
    """(model folder, export option overrides, gate thresholds) from a recipe file (YAML or JSON) with
    `model_dir`, an optional `export:` section (ExportOptions fields) and an optional `quality_gate:` section.
    A relative model_dir is relative to the recipe file."""
    path = pathlib.Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        d = load_yaml(text) or {}
    else:
        d = json.loads(text)
    if not isinstance(d, dict) or "model_dir" not in d:
        raise ExportError(f"recipe {path} needs a 'model_dir' (the Hugging Face folder to export)")
    export = dict(d.get("export") or {})
    # plus the gate's search settings (training/quant_recipes.py), which the caller takes out again
    allowed = ({f.name for f in fields(ExportOptions)} - {"adapter_path", "nodes_to_exclude", "extra"}
               | {"int4_recipes", "max_attempts"})
    unknown = set(export) - allowed
    if unknown:
        raise ExportError(f"recipe {path}: export has unknown keys {', '.join(sorted(unknown))}")
    try:
        thresholds = GateThresholds.from_mapping(d.get("quality_gate"))
    except (TypeError, ValueError) as e:
        raise ExportError(f"recipe {path}: quality_gate: {e}") from e
    model_dir = pathlib.Path(d["model_dir"])
    return (model_dir if model_dir.is_absolute() else path.parent / model_dir), export, thresholds
