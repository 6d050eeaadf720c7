"""The loop both stages share: batches, AdamW + warm-up/cosine, DDP, validation, checkpoints.

Resuming is exact: the batch order and every random draw of step s derive from (seed, s, rank)
alone, so a run stopped at step K and resumed reaches the same weights as one that never
stopped. The training state (trained weights, optimizer, scheduler, step, seed) lives in
`checkpoints/step_NNNNNNN/training_state.pt`; `checkpoints/latest` names the newest complete
one. Rank 0 alone logs, validates and writes; the other processes wait at a barrier.

Run folder:
    train_config.yaml   the resolved config (`--config OUT/train_config.yaml` reruns it)
    run.json            stage, dataset and backbone of the run (checked on --resume)
    metrics.jsonl       one line per step (loss, lr, grad norm, seconds since the loop began in
                        this process) and per validation
    loss.png            loss curves, redrawn at each validation
    checkpoints/        step folders and `latest`
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vam_policy.train.config import (
    LoopConfig,
    OptimConfig,
    config_diff,
    load_train_config,
    save_train_config,
)
from vam_policy.train.distributed import Dist

STATE_FILE = "training_state.pt"
CONFIG_FILE = "train_config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
CHECKPOINTS = "checkpoints"
LATEST = "latest"

_C = TypeVar("_C")


class TrainError(ValueError):
    """A run folder cannot be started or resumed as asked."""


# ---- schedule, batches, seeds ----------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_positions(step: int, batch: int, count: int, seed: int) -> np.ndarray:
    """Sample numbers `[batch]` of global step `step`: epochs are seeded permutations of
    `count` samples laid end to end, so the batch depends on the step, never on history."""
    positions = step * batch + np.arange(batch)
    epochs = positions // count
    order = {int(e): np.random.default_rng([seed, int(e)]).permutation(count)
             for e in np.unique(epochs)}
    return np.array([order[int(e)][p % count] for e, p in zip(epochs, positions, strict=True)])


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the random draws of one process at one step."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def validation_batches(rows: np.ndarray, count: int, batch: int) -> list[np.ndarray]:
    """Up to `count` of `rows`, evenly spread over them, in batches of at most `batch`: every
    validation sees the same samples, drawn from the whole split rather than its first
    episodes. No batches when `rows` is empty."""
    if len(rows) == 0:
        return []
    picked = rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), count)).round()
                            .astype(np.int64))]
    return np.array_split(picked, math.ceil(len(picked) / batch))


# ---- run folder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}"

    def latest(self) -> Path | None:
        """The newest complete step folder."""
        pointer = self.checkpoints / LATEST
        if not pointer.is_file():
            return None
        folder = self.checkpoints / pointer.read_text().strip()
        if not (folder / STATE_FILE).is_file():
            raise TrainError(f"{pointer} names {folder}, which has no {STATE_FILE}")
        return folder

    def mark_latest(self, folder: Path) -> None:
        tmp = self.checkpoints / f".{LATEST}.tmp"
        tmp.write_text(folder.name + "\n")
        os.replace(tmp, self.checkpoints / LATEST)

    def prune(self, keep: int) -> None:
        steps = sorted(self.checkpoints.glob("step_*"))
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def resolve_config(out: Path, config: _C | None, cls: type[_C], steps: int | None,
                   resume: bool) -> _C:
    """The config of this run, checked against the run folder and `resume`.

    On --resume the config may be omitted (the saved one is used) and only `loop.steps` may
    differ from the saved one; a new run refuses a folder that already holds checkpoints.
    """
    run = RunDir(Path(out))
    latest = run.latest()
    if resume:
        if latest is None:
            raise TrainError(f"{out}: nothing to resume (no {CHECKPOINTS}/{LATEST}); start "
                             "without --resume")
        saved = load_train_config(run.root / CONFIG_FILE, cls)
        config = saved if config is None else config
    elif latest is not None:
        raise TrainError(f"{out} already holds a run ({latest.name}); pass --resume to "
                         "continue it, or choose another --out")
    if config is None:
        raise TrainError("expected --config (a preset or YAML file) for a new run")
    if steps is not None:
        config = _with_steps(config, steps)
    if resume:
        differs = [d for d in config_diff(saved, config) if d != "loop.steps"]
        if differs:
            raise TrainError(f"{out}: --resume with a config that differs from the saved "
                             f"{CONFIG_FILE} in {differs}; only loop.steps may change")
    return config


def start_run(out: Path, config: Any, info: dict[str, str], resume: bool, dist: Dist) -> RunDir:
    """Check a resumed run's stage and backbone, then (rank 0) record config and run info."""
    run = RunDir(Path(out))
    if resume:
        saved = json.loads((run.root / RUN_FILE).read_text())
        for key in ("stage", "backbone"):
            if saved.get(key) != info[key]:
                raise TrainError(f"{out}: the run was started with {key} {saved.get(key)!r}, "
                                 f"not {info[key]!r}")
    if dist.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        save_train_config(config, run.root / CONFIG_FILE)
        (run.root / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")
    dist.barrier()
    return run


def _with_steps(config: Any, steps: int) -> Any:
    return replace(config, loop=replace(config.loop, steps=steps))


# ---- metrics -------------------------------------------------------------------------------


@dataclass
class MetricLog:
    """Step and validation records: kept in memory, appended to metrics.jsonl, plotted."""

    path: Path
    records: list[dict[str, float]] = field(default_factory=list)
    _written: int = 0

    @classmethod
    def open(cls, path: Path, keep_until: int) -> MetricLog:
        """Reads earlier records up to step `keep_until` (those of a killed run's tail go)."""
        earlier = read_metrics(path) if keep_until > 0 else []
        records = [r for r in earlier if r.get("step", math.inf) <= keep_until]
        log = cls(path, records)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        log._written = len(records)
        return log

    def add(self, record: dict[str, float]) -> None:
        self.records.append(record)

    def flush(self) -> None:
        with self.path.open("a") as file:
            file.writelines(json.dumps(r) + "\n" for r in self.records[self._written:])
        self._written = len(self.records)

    def plot(self, path: Path, title: str) -> None:
        """Training loss (raw and smoothed), validation loss and action error against step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["loss"]) for r in self.records if "loss" in r]
        val = [r for r in self.records if "val_loss" in r]
        mae = [(r["step"], r["val_action_mae_rad"]) for r in val if "val_action_mae_rad" in r]
        fig, axes = plt.subplots(1, 2 if mae else 1, figsize=(11 if mae else 6, 4),
                                 squeeze=False)
        ax = axes[0][0]
        if train:
            steps, losses = zip(*train, strict=True)
            ax.plot(steps, losses, color="tab:blue", alpha=0.25, label="train")
            ax.plot(steps, smooth(np.asarray(losses)), color="tab:blue", label="train (EMA)")
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                    color="tab:orange", label="validation")
        ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log", title=title)
        ax.legend()
        if mae:
            ax = axes[0][1]
            ax.plot(*zip(*mae, strict=True), "o-", color="tab:green", label="decoder")
            if "val_hold_still_mae_rad" in val[-1]:
                ax.axhline(val[-1]["val_hold_still_mae_rad"], color="gray", linestyle="--",
                           label="holding still")
            ax.legend()
            ax.set(xlabel="step", ylabel="mean |error| (rad)", title="validation action error")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The records of a metrics.jsonl; none when it is missing, lines cut short (by a killed
    run) skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def smooth(values: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    """Exponential moving average, started at the first value."""
    out = np.empty(len(values))
    for i, value in enumerate(values):
        out[i] = value if i == 0 else (1 - alpha) * out[i - 1] + alpha * value
    return out


# ---- the loop ------------------------------------------------------------------------------


class Stage(Protocol):
    """What a training stage gives the loop."""

    name: str
    module: nn.Module
    """Holds every trained parameter (requires_grad); DDP wraps it."""
    train_count: int

    def loss(self, model: nn.Module, positions: np.ndarray,
             generator: torch.Generator) -> torch.Tensor:
        """The loss of train samples `positions`, computed through `model` (maybe DDP)."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Validation metrics (rank 0 only; empty when there is no validation split)."""
        ...

    def save(self, folder: Path) -> None:
        """Stage artifacts of a step checkpoint (rank 0), besides the training state."""
        ...

    def export(self, folder: Path) -> Path:
        """The finished product (rank 0): a policy checkpoint or a backbone folder."""
        ...


@dataclass(frozen=True)
class LoopResult:
    step: int
    """Steps done when the loop stopped."""
    finished: bool
    """The configured number of steps was reached (and the product exported)."""
    final: Path | None
    records: tuple[dict[str, float], ...]


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _restore(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
    path = folder / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        trained = _trainable(module)
        if set(state["trainable"]) != set(trained):
            raise TrainError(f"{path}: trained weights do not match the model (another "
                             "config or LoRA setting?)")
        with torch.no_grad():
            for name, param in trained.items():
                param.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])
    except (OSError, KeyError, RuntimeError, EOFError) as error:
        raise TrainError(f"{path}: cannot resume from it ({error})") from None


def _save_state(folder: Path, step: int, seed: int, module: nn.Module,
                optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    state = {
        "step": step, "seed": seed,
        "trainable": {k: v.detach().cpu() for k, v in _trainable(module).items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
    }
    tmp = folder / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / STATE_FILE)


def weights_checksum(module: nn.Module) -> float:
    """Sum of the trained weights: equal on every rank when DDP keeps them in sync."""
    return float(sum(p.detach().double().sum() for p in _trainable(module).values()))


def run_stage(stage: Stage, run: RunDir, loop: LoopConfig, optim: OptimConfig, dist: Dist, *,
              resume: bool, stop_at: int | None, progress: bool,
              log: Callable[[str], None]) -> LoopResult:
    """Train `stage` to `loop.steps` (or to `stop_at`, checkpointing there)."""
    if loop.batch_size % dist.world:
        raise TrainError(f"loop.batch_size {loop.batch_size}: expected a multiple of the "
                         f"{dist.world} processes")
    module, total = stage.module, loop.steps
    params = list(_trainable(module).values())
    ddp_ids = [dist.device.index] if dist.device.type == "cuda" else None
    model = DistributedDataParallel(module, device_ids=ddp_ids) if dist.world > 1 else module
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas,
                                  weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        lr_factor, warmup=optim.warmup_steps, total=total, min_ratio=optim.min_lr_ratio))
    step = 0
    if resume:
        latest = run.latest()
        if latest is None:
            raise TrainError(f"{run.root}: nothing to resume (no {CHECKPOINTS}/{LATEST})")
        step = _restore(latest, module, optimizer, scheduler)
        log(f"resumed from {latest} at step {step}")
    if step > total:
        raise TrainError(f"the checkpoint is at step {step}, beyond loop.steps {total}")
    metrics = MetricLog.open(run.root / METRICS_FILE, step) if dist.is_main else None
    end = total if stop_at is None else min(total, max(stop_at, step))
    bar = tqdm(total=total, initial=step, desc=stage.name, unit="step", dynamic_ncols=True,
               disable=not (progress and dist.is_main))
    module.train()
    started = time.perf_counter()
    while step < end:
        positions = batch_positions(step, loop.batch_size, stage.train_count, loop.seed)
        seed = step_seed(loop.seed, step, dist.rank)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global RNG
        generator = torch.Generator(dist.device).manual_seed(seed)
        loss = stage.loss(model, positions[dist.rank::dist.world], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        step += 1
        value = dist.mean(float(loss.detach()))
        if not math.isfinite(value):
            raise TrainError(f"step {step}: loss is {value}; lower optim.lr or check the data")
        bar.update(1)
        if metrics is not None:
            metrics.add({"step": step, "loss": value, "lr": scheduler.get_last_lr()[0],
                         "grad_norm": float(norm),
                         "elapsed_s": time.perf_counter() - started})
            bar.set_postfix(loss=f"{value:.4f}")
            if step % loop.log_every == 0:
                bar.write(f"step {step}/{total} loss {value:.4f} "
                          f"lr {scheduler.get_last_lr()[0]:.2e}", file=sys.stderr)
                metrics.flush()
        if step % loop.eval_every == 0 or step == total:
            if metrics is not None:
                module.eval()
                scores = stage.evaluate()
                module.train()
                if scores:
                    metrics.add({"step": step, **scores})
                    bar.write(f"step {step} validation: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in scores.items()), file=sys.stderr)
                metrics.flush()
                metrics.plot(run.root / LOSS_PLOT, stage.name)
            dist.barrier()
        if step % loop.save_every == 0 or step == end:
            if dist.is_main:
                folder = run.step_dir(step)
                folder.mkdir(parents=True, exist_ok=True)
                stage.save(folder)
                _save_state(folder, step, loop.seed, module, optimizer, scheduler)
                run.mark_latest(folder)
                run.prune(loop.keep_checkpoints)
            dist.barrier()
    bar.close()
    checksum = weights_checksum(module)  # before export, which may merge LoRA away
    final = None
    if step == total:
        if dist.is_main:
            final = stage.export(run.root)
            log(f"{stage.name}: finished {total} steps -> {final}")
        dist.barrier()
    if metrics is not None:
        metrics.flush()
        metrics.plot(run.root / LOSS_PLOT, stage.name)
    print(f"rank {dist.rank}/{dist.world}: {stage.name} at step {step}/{total}, "
          f"weights checksum {checksum:.10e}", flush=True)
    return LoopResult(step, step == total, final, tuple(metrics.records if metrics else ()))
