"""LoRA adapters (peft): settings checked against the model before training, several adapters on one base,
merge into a plain model. QLoRA is LoRA over a 4-bit base, which needs CUDA and bitsandbytes.
"""
from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass

from slmops.errors import ConfigError


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora rank={self.rank!r} must be a positive integer")
        if self.alpha <= 0:
            raise ConfigError(f"lora alpha={self.alpha} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora dropout={self.dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("lora target_modules is empty; name at least one linear layer (e.g. q_proj)")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_dict(cls, d: dict) -> LoraSettings:
        unknown = set(d) - {"rank", "alpha", "dropout", "target_modules"}
        if unknown:
            raise ConfigError(f"unknown lora field(s) {sorted(unknown)}; expected rank, alpha, dropout, "
                              "target_modules")
        return cls(**d)


def linear_layers(model) -> dict[str, tuple[int, int]]:
    """Short name -> (in, out) of the smallest linear layer with that name (e.g. q_proj -> (576, 576))."""
    import torch

    found: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name and ".lora_" not in name:
            parts = name.split(".")
            # a layer that already carries an adapter keeps its original Linear as `<name>.base_layer`
            short = parts[-2] if parts[-1] == "base_layer" and len(parts) > 1 else parts[-1]
            dims = (mod.in_features, mod.out_features)
            if short not in found or min(dims) < min(found[short]):
                found[short] = dims
    return found


def check_fits(model, s: LoraSettings) -> None:
    """Refuses unknown target modules and a rank larger than a targeted layer, before any training."""
    layers = linear_layers(model)
    if "lm_head" not in s.target_modules:
        layers.pop("lm_head", None)  # the output head is a Linear too, but not a usual LoRA target
    unknown = [t for t in s.target_modules if t not in layers]
    if unknown:
        raise ConfigError(f"lora target module(s) {unknown} are not linear layers of this model; "
                          f"it has {sorted(layers)}")
    for t in s.target_modules:
        if s.rank > min(layers[t]):
            raise ConfigError(f"lora rank {s.rank} is larger than layer {t} ({layers[t][0]} -> {layers[t][1]}); "
                              f"the rank must be at most {min(layers[t])}")


def add_lora(model, s: LoraSettings, name: str = "default"):
    """Wraps `model` (or adds to an existing PeftModel) a trainable adapter `name`; base weights are frozen."""
    from peft import LoraConfig, PeftModel, get_peft_model

    cfg = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules),
                     task_type="CAUSAL_LM")
    if isinstance(model, PeftModel):
        check_fits(model.get_base_model(), s)
        model.add_adapter(name, cfg)
        model.set_adapter(name)
        return model
    check_fits(model, s)
    return get_peft_model(model, cfg, adapter_name=name)


def merge(peft_model):
    """A plain transformers model with the active adapter folded into the weights."""
    return peft_model.merge_and_unload()


def adapter_bytes(folder: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in pathlib.Path(folder).rglob("*") if p.is_file())


def qlora_unavailable_reason() -> str | None:
    """None when a 4-bit base can be trained here; otherwise the plain reason why not."""
    import torch

    if not torch.cuda.is_available():
        return ("QLoRA needs a CUDA GPU (bitsandbytes 4-bit weights) and this machine has none. "
                "Use method: lora instead: the same adapter over an fp32 base, slower and larger in memory.")
    if importlib.util.find_spec("bitsandbytes") is None:
        return ("QLoRA needs the bitsandbytes package (pip install bitsandbytes) for the 4-bit base. "
                "Use method: lora instead.")
    return None


def load_4bit(folder: pathlib.Path):
    """The base model in NF4 for QLoRA, prepared for k-bit training (only reached where CUDA is present)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    reason = qlora_unavailable_reason()
    if reason:
        raise ConfigError(reason)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                             bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb, device_map={"": 0},
                                                 local_files_only=True)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
