"""A recipe: one YAML (or TOML) file per run, starting with a comment giving the command that runs it.

    # slmops train training/recipes/lora_smollm2.yaml
    method: lora            # full | lora | qlora | distill | search
    base: smollm2           # or {source: hf, path: DIR} | {source: gguf, path: FILE} | {source: tiny, tiny: {...}}
    data: {train: training/data/support_train.jsonl, val_fraction: 0.15, template: chatml}
    train: {lr: 1e-3, max_steps: 60, batch_size: 8}
    lora: {rank: 16, alpha: 32, target_modules: [q_proj, v_proj]}
    eval: {heldout: training/data/support_heldout.jsonl}
    output: runs/lora-smollm2

Everything is validated when the recipe is read, so a typo fails in a second rather than after training.
Relative paths are relative to the current directory.
"""
from __future__ import annotations

import hashlib
import pathlib
from dataclasses import dataclass, field

from slmops.errors import ConfigError
from slmops.yaml_text import load_yaml
from training.dataset import Template
from training.distill import DistillSettings
from training.loader import ModelSpec
from training.lora import LoraSettings
from training.trainer import TrainSettings

METHODS = ("full", "lora", "qlora", "distill", "search")
TOP_LEVEL = {"method", "base", "data", "train", "lora", "adapters", "merge", "distill", "search", "eval", "output",
             "cache_dir"}


@dataclass(frozen=True)
class DataSettings:
    train: str
    validation: str | None = None  # a separate file; otherwise val_fraction of train is held back
    val_fraction: float = 0.15
    template: str = "chatml"

    def __post_init__(self) -> None:
        Template.parse(self.template)  # fails now on a malformed template
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be between 0 and 0.5 (10-20% is usual)")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    data: DataSettings
    lora: LoraSettings


@dataclass(frozen=True)
class SearchSettings:
    trials: int = 4
    lr: tuple[float, float] = (1e-4, 3e-3)  # sampled log-uniformly
    rank: tuple[int, ...] = (4, 8, 16)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"search.trials={self.trials} must be at least 1")
        if len(self.lr) != 2 or not 0 < self.lr[0] <= self.lr[1] < 1:
            raise ConfigError(f"search.lr={list(self.lr)} must be [low, high] with 0 < low <= high < 1")
        if not self.rank or any(int(r) < 1 for r in self.rank):
            raise ConfigError(f"search.rank={list(self.rank)} must be a non-empty list of positive ranks")
        object.__setattr__(self, "lr", tuple(self.lr))
        object.__setattr__(self, "rank", tuple(int(r) for r in self.rank))


@dataclass(frozen=True)
class EvalSettings:
    heldout: str | None = None
    max_new_tokens: int = 48
    latency_prompts: int = 3
    compare_base: bool = True  # also evaluate the untouched base (tuned vs base, student vs teacher)


@dataclass(frozen=True)
class Recipe:
    method: str
    base: ModelSpec
    data: DataSettings
    train: TrainSettings
    output: str
    lora: LoraSettings | None = None
    adapters: tuple[AdapterSpec, ...] = ()
    merge: bool = False
    distill: DistillSettings | None = None
    search: SearchSettings | None = None
    eval: EvalSettings = field(default_factory=EvalSettings)
    cache_dir: str = "runs/.cache"
    text: str = ""  # the recipe file as written (goes into lineage)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method in ("lora", "qlora", "search") and self.lora is None and not self.adapters:
            object.__setattr__(self, "lora", LoraSettings())
        if self.method == "distill" and self.distill is None:
            raise ConfigError("method distill needs a distill section (keep_layers or student_config)")
        if self.method == "search" and self.search is None:
            object.__setattr__(self, "search", SearchSettings())
        if self.adapters and self.method not in ("lora", "qlora"):
            raise ConfigError(f"adapters are LoRA adapters; method {self.method!r} does not take them")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ConfigError(f"adapter names must be unique: {names}")
        if self.merge and len(self.adapters) > 1:
            raise ConfigError("merge folds one adapter into the base; with several adapters keep them separate")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _section(d: dict, key: str, cls, default=None):
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, dict):
        raise ConfigError(f"recipe section {key!r} must be a mapping, got {type(value).__name__}")
    if hasattr(cls, "from_dict"):
        return cls.from_dict(value)
    known = set(cls.__dataclass_fields__)
    if set(value) - known:
        raise ConfigError(f"unknown {key} field(s) {sorted(set(value) - known)}; expected {sorted(known)}")
    try:
        return cls(**value)
    except TypeError as e:
        raise ConfigError(f"recipe section {key!r}: {e}") from e


def from_dict(d: dict, text: str = "") -> Recipe:
    if not isinstance(d, dict):
        raise ConfigError("a recipe must be a mapping at the top level")
    unknown = set(d) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {sorted(unknown)}; expected {sorted(TOP_LEVEL)}")
    for key in ("method", "base", "data", "output"):
        if key not in d:
            raise ConfigError(f"the recipe has no {key!r}")
    lora = _section(d, "lora", LoraSettings)
    adapters = []
    for i, a in enumerate(d.get("adapters") or []):
        if not isinstance(a, dict) or "name" not in a or "data" not in a:
            raise ConfigError(f"adapters[{i}] needs a name and a data section")
        adapters.append(AdapterSpec(name=str(a["name"]), data=_section(a, "data", DataSettings),
                                    lora=_section(a, "lora", LoraSettings, lora or LoraSettings())))
    return Recipe(method=d["method"], base=ModelSpec.from_dict(d["base"]), data=_section(d, "data", DataSettings),
                  train=_section(d, "train", TrainSettings, TrainSettings(epochs=3)), output=str(d["output"]),
                  lora=lora, adapters=tuple(adapters), merge=bool(d.get("merge", False)),
                  distill=_section(d, "distill", DistillSettings), search=_section(d, "search", SearchSettings),
                  eval=_section(d, "eval", EvalSettings, EvalSettings()),
                  cache_dir=str(d.get("cache_dir", "runs/.cache")), text=text)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """`train.max_steps=5` style overrides (values parsed as YAML), for quick runs and tests."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        keys = path.split(".")
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = load_yaml(raw)
    return d


def load(path: str | pathlib.Path, overrides: list[str] = (), output: str | None = None) -> Recipe:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"no recipe at {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            d = load_yaml(text)
    except Exception as e:  # yaml/toml each raise their own parse error types
        raise ConfigError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {e}") from e
    d = apply_overrides(d or {}, list(overrides))
    if output:
        d["output"] = output
    if overrides:
        text += "".join(f"\n# override: {o}" for o in overrides)
    return from_dict(d, text)
