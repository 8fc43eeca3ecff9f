"""Runs a recipe by its method. The same call works in one process or in each process started by torchrun."""
from __future__ import annotations

from training.recipe import Recipe


def run_recipe(recipe: Recipe, progress: bool = True, log=print) -> dict:
    from training import run_distill, run_finetune, run_search

    method = {"full": run_finetune, "lora": run_finetune, "qlora": run_finetune, "distill": run_distill,
              "search": run_search}[recipe.method]
    try:
        return method.run(recipe, progress=progress, log=log)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
