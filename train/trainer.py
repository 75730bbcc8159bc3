"""The training loop: identity-balanced batches, alternating min-max steps (Eq. 21), Adam with
x0.1 decay at the milestones, periodic resumable checkpoints and a JSON log of every loss.

Same config (seed included), same data and same machine (thread count included) -> the same
weights: the seed fixes the initialisation, the sampler draws epoch e from (seed, e), each sample's
augmentation from (seed, epoch, batch, position), and ``torch.use_deterministic_algorithms`` is on
during ``run`` (``cfg.deterministic``)."""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.utils.deterministic
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssft_deploy.datasets.records import ImageRecord
from ssft_deploy.errors import CheckpointError
from train.config import ConfigError, SSFTConfig
from train.data import ReIDDataset, label_map
from train.model import SSFTModel, save_checkpoint
from train.model.checkpoint import TRAIN_FORMAT, atomic_save, checkpoint_dict
from train.sampler import CrossModalitySampler, SeededBatches
from train.steps import make_optimizers, train_step

STATE_FILE = "checkpoint.pth"   # resumable trainer state
MODEL_FILE = "model.pth"        # the final model (+ model.safetensors)
LOG_FILE = "log.json"


def lr_at(cfg: SSFTConfig, epoch: int) -> float:
    """Step decay of Sec. 4.1: ``lr * 0.1^(milestones passed)``, after a linear warm-up from
    ``lr / 10`` over ``warmup_epochs`` (Bag of Tricks)."""
    lr = cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)
    if epoch < cfg.warmup_epochs:
        lr *= 0.1 + 0.9 * epoch / cfg.warmup_epochs
    return lr


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(on)`` inside the block (the process-wide flag is
    restored after; warn-only, so an op without a deterministic kernel warns instead of failing).

    The block also turns off ``torch.utils.deterministic.fill_uninitialized_memory``: with it on
    (torch's default under deterministic mode) every ``torch.empty`` is filled with NaN, a debug
    aid that was a fifth of a MobileNetV2 demo step's CPU time (aten::fill_). Kernels overwrite
    what they allocate, so the weights are the same."""
    before, warn = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    if on:
        # CUDA's cuBLAS needs a fixed workspace to be deterministic; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.backends.cudnn.benchmark = bench


def _write_json(path: Path, data: Any) -> None:
    atomic_save(data, path, lambda obj, fh: fh.write(json.dumps(obj, indent=1).encode()))


class Trainer:
    """Train ``cfg`` on ``records`` and write everything under ``out_dir``."""

    def __init__(self, cfg: SSFTConfig, records: Sequence[ImageRecord],
                 out_dir: str | os.PathLike, resume: bool = False, progress: bool = True) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        labels = label_map(records)
        if cfg.num_classes is None:
            cfg = cfg.replace(num_classes=len(labels))
        elif cfg.num_classes != len(labels):
            raise ConfigError(f"num_classes is {cfg.num_classes} but the training split has "
                              f"{len(labels)} identities")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.dataset = ReIDDataset(records, cfg, train=True, labels=labels)
        self.sampler = CrossModalitySampler(
            self.dataset.pids, self.dataset.modalities, cfg.ids_per_batch, cfg.rgb_per_id,
            cfg.ir_per_id, cfg.batches_per_epoch, cfg.seed)
        self.model = SSFTModel(cfg)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizers = make_optimizers(self.model, cfg)
        self.progress = progress
        self.start_epoch = 0
        self.log: dict[str, Any] = {"config": cfg.to_dict(), "steps": [], "epochs": []}
        if resume:
            self._resume()

    # -- state ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        path = self.out / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"--resume: no trainer state {path} (start without --resume)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise CheckpointError(f"cannot read trainer state {path}: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
            raise CheckpointError(f"{path} is not an ssft trainer state")
        try:
            self.model.load_state_dict(state["model"]["state_dict"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} does not match this config: {exc}") from None
        torch.set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        log_path = self.out / LOG_FILE
        if log_path.is_file():
            old = json.loads(log_path.read_text())
            self.log["steps"] = [s for s in old.get("steps", []) if s["epoch"] < self.start_epoch]
            self.log["epochs"] = [e for e in old.get("epochs", [])
                                  if e["epoch"] < self.start_epoch]

    def _save_state(self, next_epoch: int) -> None:
        atomic_save({
            "format": TRAIN_FORMAT, "model": checkpoint_dict(self.model), "epoch": next_epoch,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "rng": torch.get_rng_state(),
        }, self.out / STATE_FILE)

    # -- loop ----------------------------------------------------------------------------------
    def _epoch(self, epoch: int, loader: DataLoader) -> dict[str, float]:
        cfg, lr = self.cfg, lr_at(self.cfg, epoch)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        self.sampler.set_epoch(epoch)
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        steps = 0
        for step, (images, labels, modality) in enumerate(bar):
            rgb, ir = modality == 0, modality == 1
            y = torch.cat([labels[rgb], labels[ir]])
            logs = train_step(self.model, self.optimizers, images[rgb], images[ir], y, cfg)
            if not math.isfinite(logs["min"]):
                raise FloatingPointError(f"loss became {logs['min']} at epoch {epoch} "
                                         f"step {step}")
            self.log["steps"].append({"epoch": epoch, "step": step, "lr": lr, **logs})
            for k, v in logs.items():
                sums[k] += v
            steps += 1
            bar.set_postfix(loss=f"{logs['min']:.3f}")
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def run(self) -> Path:
        """Train from ``start_epoch`` to ``cfg.epochs``; returns the path of ``model.pth``."""
        cfg = self.cfg
        _write_json(self.out / "config.json", cfg.to_dict())
        loader = DataLoader(self.dataset, batch_sampler=SeededBatches(self.sampler),
                            num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
        with deterministic(cfg.deterministic):
            self._loop(loader)
        model_path, _ = save_checkpoint(self.model.eval(), self.out / MODEL_FILE)
        return model_path

    def _loop(self, loader: DataLoader) -> None:
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            means = self._epoch(epoch, loader)
            summary = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 3), **means}
            self.log["epochs"].append(summary)
            if self.progress:
                shown = ", ".join(f"{k} {v:.3f}" for k, v in means.items()
                                  if k in ("min", "id_shared", "id_transfer", "re"))
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs} ({summary['seconds']:.1f} s): "
                           f"{shown}")
            last = epoch + 1 == cfg.epochs
            if last or (epoch + 1) % cfg.checkpoint_every == 0:
                self._save_state(epoch + 1)
            _write_json(self.out / LOG_FILE, self.log)
