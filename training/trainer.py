"""The training loop shared by every method: AdamW, warmup + cosine, gradient accumulation and checkpointing,
early stopping on validation loss, checkpoints with resume, DDP when started by torchrun.

Determinism is what makes resume exact: the data order is a pure function of (seed, epoch), and each
checkpoint carries the RNG state (dropout), optimizer and scheduler, so an interrupted run resumed from its
last checkpoint takes the same steps as one that was never interrupted.
"""
from __future__ import annotations

import json
import math
import pathlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from slmops.errors import ConfigError
from training.dataset import collate
from training.distributed import DistEnv


@dataclass(frozen=True)
class TrainSettings:
    lr: float = 2e-4
    epochs: float | None = None
    max_steps: int | None = None  # optimizer steps; wins over epochs when both are set
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 0  # steps between validation passes; 0 = only at the end
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 1
    seed: int = 0
    max_length: int = 256

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None:
            raise ConfigError("train needs epochs or max_steps")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps={self.max_steps} must be at least 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs={self.epochs} must be positive")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr={self.lr} must be in (0, 1)")
        for name in ("batch_size", "grad_accum", "keep_checkpoints", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("warmup_steps", "eval_every", "early_stopping_patience", "save_every", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")
        if self.early_stopping_patience and not self.eval_every:
            raise ConfigError("early_stopping_patience needs eval_every > 0 (validation during training)")

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown train field(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)

    def total_steps(self, n_train: int, world: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        per_step = self.batch_size * self.grad_accum * world
        return max(1, math.ceil(self.epochs * n_train / per_step))


@dataclass
class TrainResult:
    steps: int
    first_loss: float
    last_loss: float
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool
    resumed_from: int | None
    tokens: int
    seconds: float
    world: int = 1
    losses: list = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def micro_batch(rows: list, step: int, micro: int, s: TrainSettings, env: DistEnv) -> list:
    """The rows of micro-batch `micro` of optimizer step `step` on this process (a pure function)."""
    import torch

    shard_len = len(rows) // env.world if env.world > 1 else len(rows)
    per_epoch = max(1, shard_len // s.batch_size)  # drop the ragged end: equal batch shapes on every rank
    k = step * s.grad_accum + micro
    epoch, i = divmod(k, per_epoch)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(s.seed * 100003 + epoch)).tolist()
    mine = order[env.rank::env.world][:shard_len] if env.world > 1 else order
    return [rows[j] for j in mine[i * s.batch_size:(i + 1) * s.batch_size]]


def validation_loss(model, rows: list, pad_id: int, batch_size: int = 8) -> float:
    """Mean cross-entropy per target token (exp of it is the perplexity)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            b = to_device(collate(rows[i:i + batch_size], pad_id), next(model.parameters()).device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            labels = b["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += nll.item()
            count += int((labels != -100).sum())
    return total / max(1, count)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def default_loss(model, batch) -> tuple:
    return model(**batch).loss, {}


class Checkpoints:
    """out_dir/checkpoints/step-NNNNNN/state.pt: trainable weights, optimizer, scheduler, RNG, counters."""

    def __init__(self, out_dir: pathlib.Path, keep: int):
        self.root = pathlib.Path(out_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> pathlib.Path | None:
        done = sorted(p for p in self.root.glob("step-*") if (p / "state.pt").exists())
        return done[-1] if done else None

    def save(self, step: int, state: dict) -> None:
        import torch

        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".step-{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint is either complete or absent
        for old in sorted(self.root.glob("step-*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(model, train_rows: list, val_rows: list, s: TrainSettings, out_dir: pathlib.Path, pad_id: int,
          loss_fn: Callable = default_loss, progress: bool = True, log: Callable = print,
          on_step: Callable | None = None) -> TrainResult:
    """Trains `model` in place (the parameters with requires_grad) and returns what happened.

    Resumes from out_dir/checkpoints when a checkpoint exists. Under torchrun every process runs this with
    the same arguments; rank 0 alone writes files and logs.
    """
    import torch

    env = DistEnv.from_environ()
    out_dir = pathlib.Path(out_dir)
    torch.manual_seed(s.seed + env.rank)
    if s.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    device = next(model.parameters()).device  # CPU here; CUDA for a QLoRA base
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # norms and biases: weight decay would only shrink them
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    total = s.total_steps(len(train_rows), env.world)
    if len(train_rows) < s.batch_size * env.world:
        raise ConfigError(f"{len(train_rows)} training records are fewer than batch_size={s.batch_size} x "
                          f"{env.world} process(es)")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: lr_factor(st, s.warmup_steps, total, s.min_lr_ratio))
    ckpts = Checkpoints(out_dir, s.keep_checkpoints)
    start, best_val, best_step, bad_evals, best_weights, resumed_from = 0, None, None, 0, None, None
    latest = ckpts.latest()
    if latest is not None:
        state = torch.load(latest / "state.pt", weights_only=False)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in state["trainable"].items():
                named[n].copy_(t)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"][env.rank] if env.rank < len(state["rng"]) else state["rng"][0])
        start, best_val, best_step, bad_evals = state["step"], state["best_val"], state["best_step"], state["bad_evals"]
        best_weights = state.get("best_weights")
        resumed_from = start
        if env.is_main:
            log(f"resumed from {latest.name} (step {start} of {total})")
    runner = env.wrap(model)
    log_path = out_dir / "loss_log.jsonl"
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = [ln for ln in (log_path.read_text().splitlines() if log_path.exists() else [])
                if json.loads(ln)["step"] <= start]  # a resumed run rewrites the steps it repeats
        log_path.write_text("".join(ln + "\n" for ln in kept))
    losses, tokens, stopped = [], 0, False
    t0 = time.perf_counter()
    bar = _progress(progress and env.is_main, total, start, log)

    def save(step: int) -> None:
        rngs = env.gather_rng(torch.get_rng_state())
        if env.is_main:
            ckpts.save(step, {"step": step, "trainable": trainable_state(model), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "rng": rngs, "best_val": best_val,
                              "best_step": best_step, "bad_evals": bad_evals, "best_weights": best_weights})

    done = start
    try:
        for step in range(start, total):
            model.train()
            step_loss, step_parts = 0.0, {}
            for micro in range(s.grad_accum):
                batch = to_device(collate(micro_batch(train_rows, step, micro, s, env), pad_id), device)
                with env.no_sync(runner, last=micro == s.grad_accum - 1):
                    loss, parts = loss_fn(runner, batch)
                    (loss / s.grad_accum).backward()
                step_loss += loss.item() / s.grad_accum
                for k, v in parts.items():
                    step_parts[k] = step_parts.get(k, 0.0) + v / s.grad_accum
                tokens += int(batch["attention_mask"].sum()) * env.world
            if s.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step_loss = env.mean(step_loss)
            losses.append(step_loss)
            entry = {"step": step + 1, "loss": round(step_loss, 5), "lr": sched.get_last_lr()[0],
                     **{k: round(v, 5) for k, v in step_parts.items()}}
            done = step + 1
            if s.eval_every and done % s.eval_every == 0 and val_rows:
                val = validation_loss(model, val_rows, pad_id)
                entry["val_loss"] = round(val, 5)
                if best_val is None or val < best_val - 1e-4:
                    best_val, best_step, bad_evals, best_weights = val, done, 0, trainable_state(model)
                else:
                    bad_evals += 1
                    stopped = bool(s.early_stopping_patience) and bad_evals >= s.early_stopping_patience
            if env.is_main:
                with log_path.open("a") as f:
                    f.write(json.dumps(entry) + "\n")
                bar.advance(entry, tokens)
            if s.save_every and (stopped or (done % s.save_every == 0 and done < total)):
                save(done)
            if on_step:
                on_step(done, entry)
            if stopped:
                if env.is_main:
                    log(f"early stop at step {done}: validation loss has not improved for {bad_evals} evaluations "
                        f"(best {best_val:.4f} at step {best_step})")
                break
    finally:
        bar.close()
    if s.save_every and not stopped and done > start:
        save(done)  # the finished run's own state (a resume then has nothing left to do)
    if best_weights is not None:  # end on the weights with the best validation loss
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in best_weights.items():
                named[n].copy_(t)
    if s.gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    model.eval()
    return TrainResult(steps=done, first_loss=losses[0] if losses else float("nan"),
                       last_loss=losses[-1] if losses else float("nan"), best_val_loss=best_val,
                       best_step=best_step, stopped_early=stopped, resumed_from=resumed_from, tokens=tokens,
                       seconds=time.perf_counter() - t0, world=env.world, losses=losses)


class _progress:
    """One progress display per training run: a rich bar (step, loss, tokens/s, elapsed, ETA) on a terminal,
    else a log line every tenth of the run (same figures), or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, start: int, log: Callable = print):
        import sys

        self.p, self.log, self.total, self.start = None, log if enabled else None, total, start
        self.every = max(1, (total - start) // 10)
        self.t0 = time.perf_counter()
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.p = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.p.start()
            self.task = self.p.add_task("train", total=total, completed=start)

    def advance(self, entry: dict, tokens: int = 0) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = f" {tokens / elapsed:,.0f} tok/s" if tokens and elapsed > 0 else ""
        val = f" val {entry['val_loss']:.3f}" if "val_loss" in entry else ""
        if self.p:
            self.p.update(self.task, advance=1, description=f"train loss {entry['loss']:.3f}{val}{rate}")
        elif self.log and ((entry["step"] - self.start) % self.every == 0 or entry["step"] == self.total):
            done = entry["step"] - self.start
            eta = elapsed / done * (self.total - entry["step"]) if done else 0.0
            self.log(f"step {entry['step']}/{self.total} loss {entry['loss']:.3f}{val}{rate} "
                     f"elapsed {elapsed:.0f} s ETA {eta:.0f} s")

    def close(self) -> None:
        if self.p:
            self.p.stop()