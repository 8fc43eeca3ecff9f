"""Recipe: a small random search over learning rate (log-uniform) and LoRA rank, ranked by validation loss.

Each trial trains a fresh adapter on the same base with the recipe's train settings, in trials/<n>/.
search.json lists every trial and the best; the best trial's adapter is copied to adapters/best/.
"""
from __future__ import annotations

import json
import math
import pathlib
import random
import shutil
from dataclasses import replace

from slmops.errors import ConfigError
from training import lineage
from training.dataset import Template
from training.distributed import DistEnv
from training.loader import load_model
from training.lora import add_lora, check_fits
from training.run_finetune import prepare_data
from training.trainer import train, validation_loss


def sample_trials(search) -> list[dict]:
    """The (lr, rank) of every trial, fixed by the search seed before any training."""
    rng = random.Random(search.seed)
    lo, hi = math.log(search.lr[0]), math.log(search.lr[1])
    return [{"trial": i, "lr": float(f"{math.exp(rng.uniform(lo, hi)):.3g}"), "rank": rng.choice(search.rank)}
            for i in range(search.trials)]


def run(recipe, progress: bool = True, log=print) -> dict:
    out = pathlib.Path(recipe.output)
    template = Template.parse(recipe.data.template)
    _, tokenizer, _ = load_model(recipe.base, recipe.cache_dir)
    env = DistEnv.from_environ()  # after loading: see run_finetune.run
    tr, va, files = prepare_data(recipe.data, template, tokenizer, recipe.train.max_length, recipe.train.seed)
    if not va:
        raise ConfigError("search ranks trials by validation loss and needs validation records")
    trials = sample_trials(recipe.search)
    for t in trials:
        model, _, _ = load_model(recipe.base, recipe.cache_dir)  # fresh base per trial: no leakage between trials
        # alpha follows the rank (alpha/rank fixed at the recipe's ratio) so lr and rank are the only variables
        lora = replace(recipe.lora, rank=t["rank"], alpha=recipe.lora.alpha / recipe.lora.rank * t["rank"])
        check_fits(model, lora)
        model = add_lora(model, lora)
        settings = replace(recipe.train, lr=t["lr"])
        folder = out / "trials" / str(t["trial"])
        r = train(model, tr, va, settings, folder, tokenizer.pad_token_id, progress=progress, log=log)
        t.update(alpha=lora.alpha, val_loss=r.best_val_loss if r.best_val_loss is not None
                 else validation_loss(model, va, tokenizer.pad_token_id), last_loss=r.last_loss, steps=r.steps)
        if env.is_main:
            model.save_pretrained(folder / "adapter")
            log(f"trial {t['trial']}: lr {t['lr']:.2e} rank {t['rank']} -> validation loss {t['val_loss']:.4f}")
    if not env.is_main:
        return {"trials": trials}
    best = min(trials, key=lambda t: t["val_loss"])
    shutil.rmtree(out / "adapters" / "best", ignore_errors=True)
    shutil.copytree(out / "trials" / str(best["trial"]) / "adapter", out / "adapters" / "best")
    summary = {"trials": trials, "best": best}
    (out / "search.json").write_text(json.dumps(summary, indent=1))
    lineage.write([out, out / "adapters" / "best"], lineage.lineage(recipe, files, {"search": summary}))
    return summary
