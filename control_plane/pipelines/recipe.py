"""A pipeline recipe: one YAML file, a name and an ordered list of stages, each a one-key mapping.

    # slmops pipeline submit pipelines/support_tiny.yaml
    name: support-tiny
    stages:
      - train: {recipe: training/recipes/full_tiny_text_template.yaml, set: [train.max_steps=5]}
      - train: {recipe: training/recipes/distill_tiny.yaml}     # chained: the model above is its teacher
      - evaluate: {max_examples: 8}
      - export: {precisions: [int4]}
      - gate: {max_examples: 8}
      - publish: {name: support, version: "v-{hash}"}
      - rollout: {strategy: canary, canary: {devices: 1}, selector: {labels: {site: berlin}}}

train and evaluate stages may repeat (a chain, in any order, before export); every train stage after the
first starts from the model the train stage before it left: its base (the teacher, for distill), replacing the
base its training recipe names. The other kinds appear once, in the order of KINDS.

`parse` checks the whole recipe before anything runs and raises PipelineInvalid listing every error with its
location ("stages[2].export.precisions[0]: ..."). Relative paths are relative to `base_dir` (the submitter's
working directory, as for `slmops train`).
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field, fields

from slmops.errors import ConfigError
from slmops.yaml_text import load_yaml

KINDS = ("train", "evaluate", "export", "gate", "publish", "rollout")   # also the only order allowed
REPEATABLE = ("train", "evaluate")                                      # a chain; the other kinds appear once
ORDER = {"train": 0, "evaluate": 0, "export": 1, "gate": 2, "publish": 3, "rollout": 4}
PREVIOUS = "previous"   # a chained train stage's base: the model of the train stage before it
NEEDS = {"evaluate": "train", "export": "train", "gate": "export", "publish": "gate", "rollout": "publish"}
WORKER_KINDS = ("train", "evaluate", "export", "gate")                  # run in worker processes
EXECUTORS = ("local", "torchrun")
STRATEGIES = ("all", "canary", "waves")
TRAINED_MODEL = {"full": "always", "distill": "always", "lora": "merge", "qlora": "merge"}
EXPORT_OPTIONS = ("int4_block_size", "int4_symmetric", "int4_accuracy_level", "int4_algo", "int8_accuracy_level")


class PipelineInvalid(ConfigError):
    def __init__(self, errors: list[str]):
        super().__init__(f"{len(errors)} error(s) in the pipeline recipe:\n  " + "\n  ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Resources:
    memory_mb: int = 0          # address-space limit of the worker (0 = none); a stage over it fails, named
    timeout_s: int = 6 * 3600


@dataclass(frozen=True)
class Executor:
    kind: str = "local"
    nproc_per_node: int = 1     # torchrun: processes on this node
    nnodes: int = 1             # torchrun: > 1 joins a rendezvous at rdzv_endpoint (docs/PIPELINES.md)
    rdzv_endpoint: str = ""


@dataclass(frozen=True)
class Stage:
    kind: str
    config: dict                # the validated, normalised settings (hashed into the stage key)
    resources: Resources = field(default_factory=Resources)
    executor: Executor = field(default_factory=Executor)
    data_files: tuple[str, ...] = ()   # absolute paths whose contents are inputs of the stage


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]
    base_dir: str
    text: str = ""

    def stage(self, kind: str) -> Stage | None:
        return next((s for s in self.stages if s.kind == kind), None)


class _Errors:
    def __init__(self):
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _mapping(value, where: str, errors: _Errors, allowed: tuple[str, ...]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(where, f"must be a mapping, got {type(value).__name__}")
        return {}
    for k in value:
        if k not in allowed:
            errors.add(f"{where}.{k}", f"unknown key; expected one of {', '.join(allowed)}")
    return value


def _number(d: dict, key: str, where: str, errors: _Errors, default, lo, hi, kind=int):
    value = d.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value))
    if not ok or not lo <= value <= hi:
        errors.add(f"{where}.{key}", f"{value!r} must be {'an integer' if kind is int else 'a number'} "
                                     f"in [{lo}, {hi}]")
        return default
    return kind(value)


def _resolved(base: pathlib.Path, value, where: str, errors: _Errors, what: str, exists, missing: str
              ) -> pathlib.Path | None:
    """`value` as a path relative to `base`, or None with the error recorded: not a string, or `exists(p)` false
    (`missing` names what was looked for)."""
    if not isinstance(value, str) or not value:
        errors.add(where, f"{value!r} must be {what}")
        return None
    p = pathlib.Path(value)
    p = p if p.is_absolute() else base / p
    if not exists(p):
        errors.add(where, missing.format(p=p))
        return None
    return p


def _path(base: pathlib.Path, value, where: str, errors: _Errors) -> pathlib.Path | None:
    return _resolved(base, value, where, errors, "a file path", pathlib.Path.is_file, "no file at {p}")


# ---- one parser per stage kind: (settings, data files) ------------------------------------------------------
def _train(d: dict, where: str, base: pathlib.Path, errors: _Errors, chained: bool = False
           ) -> tuple[dict, tuple[str, ...]]:
    from training import recipe as tr
    from training.dataset import Template, load_jsonl

    d = _mapping(d, where, errors, ("recipe", "set", "executor", "resources"))
    raw, text = d.get("recipe"), ""
    if isinstance(raw, str):
        p = _path(base, raw, f"{where}.recipe", errors)
        if p is None:
            return {}, ()
        import yaml

        try:
            raw = load_yaml(p.read_text())
        except yaml.YAMLError as e:
            errors.add(f"{where}.recipe", f"{p} is not valid YAML: {e}")
            return {}, ()
    if not isinstance(raw, dict):
        errors.add(f"{where}.recipe", "needs a training recipe: a file path or an inline mapping")
        return {}, ()
    overrides = d.get("set") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        errors.add(f"{where}.set", "must be a list of section.key=value strings")
        overrides = []
    raw = json.loads(json.dumps(raw))  # a private copy (overrides edit it)
    raw.setdefault("output", "(set by the pipeline)")
    try:
        raw = tr.apply_overrides(raw, overrides)
        replaced = raw.get("base")
        if chained:   # the model of the train stage before; the recipe's own base (if any) is not used
            raw["base"] = {"source": "hf", "path": "(the model of the train stage before)"}
        r = tr.from_dict(raw, text)
    except ConfigError as e:
        errors.add(f"{where}.recipe", str(e))
        return {}, ()
    need = TRAINED_MODEL.get(r.method)
    if need is None or (need == "merge" and not r.merge):
        errors.add(f"{where}.recipe.method", f"method {r.method!r} does not leave one model to export; use full or "
                                            f"distill, or lora/qlora with merge: true")
    files = []
    for key, value in (("data.train", r.data.train), ("data.validation", r.data.validation),
                       ("eval.heldout", r.eval.heldout)):
        if value is None:
            continue
        p = _path(base, value, f"{where}.recipe.{key}", errors)
        if p is None:
            continue
        files.append(str(p))
        if key != "eval.heldout":
            try:
                Template.parse(r.data.template).check(load_jsonl(p))
            except ConfigError as e:
                errors.add(f"{where}.recipe.{key}", str(e))
    raw.pop("output", None)
    cfg = {"recipe": raw, "method": r.method, "template": r.data.template, "heldout": r.eval.heldout}
    if chained:
        raw.pop("base")
        cfg["base"] = PREVIOUS
        if replaced is not None:
            cfg["recipe_base_replaced"] = replaced   # shown in the stage's inputs, so the replacement is visible
    return cfg, tuple(files)


def _evaluate(d: dict, where: str, base: pathlib.Path, errors: _Errors) -> tuple[dict, tuple[str, ...]]:
    d = _mapping(d, where, errors, ("heldout", "max_examples", "max_new_tokens", "min_task_accuracy", "resources",
                                    "reference_model", "compare_model", "min_rouge_l", "min_gain_over_compare",
                                    "max_loss_vs_compare"))
    heldout = d.get("heldout", str(pathlib.Path(__file__).parents[2] / "training" / "data" / "support_heldout.jsonl"))
    p = _path(base, heldout, f"{where}.heldout", errors)
    cfg = {"heldout": str(p) if p else None,
           "max_examples": _number(d, "max_examples", where, errors, 0, 0, 100000),
           "max_new_tokens": _number(d, "max_new_tokens", where, errors, 32, 1, 512),
           "min_task_accuracy": _number(d, "min_task_accuracy", where, errors, 0.0, 0.0, 1.0, float)}
    if "min_rouge_l" in d:   # the new keys only when given, so the stage keys of older recipes stay as they were
        cfg["min_rouge_l"] = _number(d, "min_rouge_l", where, errors, 0.0, 0.0, 1.0, float)
    files = [str(p)] if p else []
    for key in ("reference_model", "compare_model"):   # Hugging Face folders; their weights key the stage
        if key not in d:
            continue
        folder = _model_folder(base, d[key], f"{where}.{key}", errors)
        if folder:
            cfg[key] = str(folder)
            files += sorted(str(f) for f in folder.iterdir() if f.name == "config.json" or f.suffix == ".safetensors")
    floors = [k for k in ("min_gain_over_compare", "max_loss_vs_compare") if k in d]   # ROUGE-L vs compare_model
    if len(floors) > 1:
        errors.add(f"{where}.max_loss_vs_compare", "give one of min_gain_over_compare (the set the new model is "
                                                   "for) and max_loss_vs_compare (a set it may not forget)")
    for key in floors:
        if "compare_model" not in d:
            errors.add(f"{where}.{key}", "needs compare_model (the model to be measured against)")
        cfg[key] = _number(d, key, where, errors, 0.0, -1.0 if key.startswith("min") else 0.0, 1.0, float)
    return cfg, tuple(files)


def _model_folder(base: pathlib.Path, value, where: str, errors: _Errors) -> pathlib.Path | None:
    return _resolved(base, value, where, errors, "a Hugging Face model folder",
                     lambda p: (p / "config.json").is_file(), "no Hugging Face model at {p} (no config.json)")


def _export(d: dict, where: str, base: pathlib.Path, errors: _Errors, tied: bool = True
            ) -> tuple[dict, tuple[str, ...]]:
    """`recipes` (or its older spelling `precisions`): the builds, named as in training/quant_recipes.py (int4
    recipes, int8, fp16, fp32, or `int4`: int4 as this stage's options say); default the search `slmops export
    --precision int4` makes (quant_recipes.plan). Each is checked as the builder would take it (`tied`: the
    trained model ties its embedding and head, see _ties) and fp32, the gate's reference, is always added. Stored
    as `precisions`, ordered fp32, fp16, int8, then the int4 ones as given, so older recipes keep their keys."""
    from training import quant_recipes
    from training.export import PROVIDERS, ExportError, ExportOptions

    d = _mapping(d, where, errors, ("recipes", "precisions", "execution_provider", *EXPORT_OPTIONS, "resources"))
    options = {k: d[k] for k in EXPORT_OPTIONS if k in d}
    ep = d.get("execution_provider", "cpu")
    key = "precisions" if "precisions" in d else "recipes"
    if "precisions" in d and "recipes" in d:
        errors.add(f"{where}.recipes", "give recipes or precisions (its older name), not both")
    names = d.get(key)
    if ep not in PROVIDERS:
        errors.add(f"{where}.execution_provider", f"{ep!r} is not one of {', '.join(PROVIDERS)}")
        return {}, ()
    if names is None:   # the gate's default search; an int4_algo of the stage's own means int4 is that one setting
        names = [r.name for r in quant_recipes.plan("int4", ep, ("options",) if "int4_algo" in d else None)]
    if not isinstance(names, list) or not names or len(names) > 32:
        errors.add(f"{where}.{key}", "must be a list of 1 to 32 recipes or precisions, e.g. [rtn, rtn_mixed, "
                                     "hqq_mixed, int8] (training/quant_recipes.py)")
        names = []
    good, seen = [], []
    for i, name in enumerate(names):
        try:
            recipe = quant_recipes.named(name)
            if name in seen:
                raise ExportError(f"{name!r} is listed twice")
            seen.append(name)
            recipe.options(ExportOptions(precision="fp32", execution_provider=ep, **options), tied)
        except (ExportError, TypeError) as e:
            errors.add(f"{where}.{key}[{i}]", str(e) + (" (the trained model ties its embedding and head)"
                                                        if tied and "shared embedding" in str(e) else ""))
            continue
        good.append(name)
    floats = [p for p in ("fp32", "fp16", "int8") if p in good or p == "fp32"]   # fp32: the gate's reference
    cfg = {"precisions": floats + [n for n in good if n not in floats], "execution_provider": ep,
           "options": options}
    if ep != "cpu":
        cfg["cpu_twins"] = True   # the gate measures CPU builds of the same weights (stages.export)
    return cfg, ()


def _ties(train: Stage | None, base: pathlib.Path) -> bool:
    """Whether the model the train stages leave ties its embedding and head (the builder then shares them at
    int4, which some int4 settings cannot take): the first train stage's base decides (later ones, distill
    included, keep its layout). A tiny model does not; a Hugging Face folder says so in config.json; smollm2
    and a GGUF file are taken to tie them (SmolLM2 does), since they are read only when trained."""
    from training.loader import ModelSpec
    from training.quant_recipes import ties_embeddings

    try:
        spec = ModelSpec.from_dict((train.config.get("recipe") or {}).get("base") or "")
    except (ConfigError, AttributeError, TypeError):
        return True
    if spec.source == "tiny":
        return False
    if spec.source == "hf":
        p = pathlib.Path(spec.path)
        return ties_embeddings(p if p.is_absolute() else base / p)
    return True


def _gate(d: dict, where: str, base: pathlib.Path, errors: _Errors, exported: list[str],
          target: str = "cpu") -> tuple[dict, tuple]:
    from training import quant_recipes
    from training.export import RUNNABLE, ExportError
    from training.quality_gate import GateThresholds

    d = _mapping(d, where, errors, ("order", "thresholds", "max_examples", "sets", "resources"))
    sets = d.get("sets", "original")
    if sets not in ("original", "evaluated"):
        errors.add(f"{where}.sets", f"{sets!r} must be original (the original held-out set) or evaluated (every "
                                    f"set the evaluate stages scored, with their references)")

    def precision(name) -> str | None:
        try:
            return quant_recipes.named(name).precision
        except ExportError:
            return None
    # default: the export's int4 builds in the order given (smallest first), then int8, fp16, fp32
    order = d.get("order") or ([n for n in exported if precision(n) == "int4"]
                               + [p for p in ("int8", "fp16", "fp32") if p in exported])
    if not isinstance(order, list):
        errors.add(f"{where}.order", "must be a list of exported recipes or precisions, smallest first")
        order = []
    for i, p in enumerate(order):
        if p not in exported:
            errors.add(f"{where}.order[{i}]", f"{p!r} is not exported by the export stage ({', '.join(exported)})")
    if order and not any(precision(p) in RUNNABLE["cpu"] for p in order):
        errors.add(f"{where}.order", f"none of {order} can pass: the gate measures on the CPU ({target} builds "
                                     f"through their CPU twins) and fp16 has no CPU twin; add int8, int4 or fp32")
    thresholds = _mapping(d.get("thresholds"), f"{where}.thresholds", errors,
                          tuple(f.name for f in fields(GateThresholds)))
    try:
        t = GateThresholds.from_mapping({k: v for k, v in thresholds.items()
                                         if k in {f.name for f in fields(GateThresholds)}})
    except (TypeError, ValueError) as e:
        errors.add(f"{where}.thresholds", str(e))
        t = GateThresholds()
    max_examples = _number(d, "max_examples", where, errors, t.max_examples, 0, 100000)
    from dataclasses import asdict

    cfg = {"order": order, "thresholds": {**asdict(t), "max_examples": max_examples}}
    if sets == "evaluated":   # absent otherwise, so the keys of recipes without it stay as they were
        cfg["sets"] = sets
    return cfg, ()


def _publish(d: dict, where: str, base: pathlib.Path, errors: _Errors) -> tuple[dict, tuple]:
    d = _mapping(d, where, errors, ("name", "version"))
    out = {}
    for key in ("name", "version"):
        v = d.get(key)
        if not isinstance(v, str) or not v or len(v) > 128 or any(c.isspace() or c in "@/" for c in v):
            errors.add(f"{where}.{key}", f"{v!r} must be a non-empty string without spaces, '@' or '/'")
        out[key] = v
    v = out.get("version") or ""
    try:
        v.format(hash="x", job="x")
    except (KeyError, IndexError, ValueError) as e:
        errors.add(f"{where}.version", f"{v!r}: only {{hash}} and {{job}} may be filled in ({e})")
    return out, ()


def _rollout(d: dict, where: str, base: pathlib.Path, errors: _Errors) -> tuple[dict, tuple]:
    from control_plane.fleet_admin import GATE_FIELDS

    before = len(errors.items)
    d = _mapping(d, where, errors, ("strategy", "selector", "canary", "waves", "gate", "max_devices_per_minute",
                                    "wait", "wait_timeout_s"))
    strategy = d.get("strategy", "all")
    if strategy not in STRATEGIES:
        errors.add(f"{where}.strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
    sel = _mapping(d.get("selector"), f"{where}.selector", errors, ("labels", "hardware_classes", "all_devices"))
    if not sel.get("labels") and not sel.get("hardware_classes") and not sel.get("all_devices"):
        errors.add(f"{where}.selector", "is empty: give labels, hardware_classes or all_devices: true")

    def wave(w, at):
        w = _mapping(w, at, errors, ("devices", "percent"))
        if len([k for k in ("devices", "percent") if k in w]) != 1:
            errors.add(at, "give exactly one of devices or percent")
        return w
    canary = wave(d["canary"], f"{where}.canary") if "canary" in d else None
    if strategy == "canary" and canary is None:
        errors.add(f"{where}.canary", "strategy canary needs a canary size, e.g. {devices: 1} or {percent: 10}")
    waves = d.get("waves") or []
    if not isinstance(waves, list):
        errors.add(f"{where}.waves", "must be a list of {percent: P} or {devices: N}")
        waves = []
    waves = [wave(w, f"{where}.waves[{i}]") for i, w in enumerate(waves)]
    if strategy == "waves" and not waves:
        errors.add(f"{where}.waves", "strategy waves needs at least one wave")
    gate = _mapping(d.get("gate"), f"{where}.gate", errors, tuple(GATE_FIELDS))
    for k, v in gate.items():
        if k in GATE_FIELDS and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            errors.add(f"{where}.gate.{k}", f"{v!r} must be a number >= 0")
    cfg = {"strategy": strategy, "selector": sel, "canary": canary, "waves": waves, "gate": gate,
           "max_devices_per_minute": _number(d, "max_devices_per_minute", where, errors, 0, 0, 1_000_000),
           "wait": bool(d.get("wait", True)),
           "wait_timeout_s": _number(d, "wait_timeout_s", where, errors, 3600, 1, 7 * 86400)}
    if len(errors.items) == before:  # the fleet's own checks (e.g. wave percentages must grow)
        from control_plane.pipelines.delivery import rollout_spec

        try:
            rollout_spec(cfg, "name", "version")
        except (ConfigError, TypeError, ValueError) as e:
            errors.add(where, str(e))
    return cfg, ()


def _resources(d, where: str, errors: _Errors) -> Resources:
    d = _mapping(d, where, errors, ("memory_mb", "timeout_s"))
    return Resources(_number(d, "memory_mb", where, errors, 0, 0, 10_000_000),
                     _number(d, "timeout_s", where, errors, Resources.timeout_s, 1, 30 * 86400))


def _executor(d, where: str, errors: _Errors) -> Executor:
    d = _mapping(d, where, errors, ("kind", "nproc_per_node", "nnodes", "rdzv_endpoint"))
    kind = d.get("kind", "local")
    if kind not in EXECUTORS:
        errors.add(f"{where}.kind", f"{kind!r} is not one of {', '.join(EXECUTORS)}")
    nnodes = _number(d, "nnodes", where, errors, 1, 1, 1024)
    endpoint = d.get("rdzv_endpoint", "")
    if nnodes > 1 and not endpoint:
        errors.add(f"{where}.rdzv_endpoint", "nnodes > 1 needs a rendezvous HOST:PORT every node can reach")
    return Executor(kind, _number(d, "nproc_per_node", where, errors, 1, 1, 64), nnodes, str(endpoint))


# ---- the whole recipe -----------------------------------------------------------------------------------------
def parse(d, base_dir: str | pathlib.Path, text: str = "") -> Pipeline:
    """The validated pipeline, or PipelineInvalid listing every error found."""
    errors = _Errors()
    base = pathlib.Path(base_dir)
    if not isinstance(d, dict):
        raise PipelineInvalid(["(top): a pipeline recipe must be a mapping with name and stages"])
    for k in d:
        if k not in ("name", "stages"):
            errors.add(k, "unknown key; expected name and stages")
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.add("name", f"{name!r} must be a non-empty string")
    items = d.get("stages")
    if not isinstance(items, list) or not items:
        errors.add("stages", "must be a non-empty list of one-key mappings, e.g. - train: {recipe: FILE}")
        items = []
    stages, seen = [], []
    for i, item in enumerate(items):
        where = f"stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            errors.add(where, f"must be a mapping with exactly one key, the stage kind ({', '.join(KINDS)})")
            continue
        kind, body = next(iter(item.items()))
        if kind not in KINDS:
            errors.add(where, f"unknown stage kind {kind!r}; expected one of {', '.join(KINDS)}")
            continue
        where = f"{where}.{kind}"
        if kind in seen and kind not in REPEATABLE:
            errors.add(where, f"a second {kind} stage; only {' and '.join(REPEATABLE)} stages may repeat")
            continue
        if seen and ORDER[kind] < ORDER[seen[-1]]:
            errors.add(where, f"comes after {seen[-1]}; stages run in the order train/evaluate (a chain, "
                              f"repeatable) -> {' -> '.join(KINDS[2:])}")
        if kind in NEEDS and NEEDS[kind] not in seen:
            errors.add(where, f"needs a {NEEDS[kind]} stage before it")
        seen.append(kind)
        body = body if body is not None else {}
        if not isinstance(body, dict):
            errors.add(where, f"must be a mapping of settings, got {type(body).__name__}")
            continue
        if kind == "gate":
            if (body.get("sets") == "evaluated") and "evaluate" not in seen:
                errors.add(f"{where}.sets", "evaluated, but no evaluate stage comes before the gate")
            exp = next((s for s in stages if s.kind == "export"), None)
            config, files = _gate(body, where, base, errors, exp.config.get("precisions", []) if exp else [],
                                  exp.config.get("execution_provider", "cpu") if exp else "cpu")
        elif kind == "export":
            config, files = _export(body, where, base, errors,
                                    _ties(next((s for s in stages if s.kind == "train"), None), base))
        elif kind == "train":
            config, files = _train(body, where, base, errors, chained=seen.count("train") > 1)
        else:
            config, files = {"evaluate": _evaluate, "publish": _publish,
                             "rollout": _rollout}[kind](body, where, base, errors)
        resources = _resources(body.get("resources"), f"{where}.resources", errors) \
            if kind in WORKER_KINDS else Resources()
        executor = _executor(body.get("executor"), f"{where}.executor", errors) if kind == "train" else Executor()
        stages.append(Stage(kind, config, resources, executor, files))
    if errors.items:
        raise PipelineInvalid(errors.items)
    return Pipeline(name.strip(), tuple(stages), str(base), text)


def loads(text: str, base_dir: str | pathlib.Path) -> Pipeline:
    import yaml

    try:
        d = load_yaml(text)
    except yaml.YAMLError as e:
        raise PipelineInvalid([f"(top): not valid YAML: {e}"]) from e
    return parse(d, base_dir, text)
