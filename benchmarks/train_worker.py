"""A training-step worker for benchmarks/train_speed.py: one config variant in its own process.

Speaks the ``benchmarks.workers`` protocol: a hello line, then ``time`` commands answered with
the seconds of each training step (data loading included: batches come from the trainer's own
DataLoader) and the process's CPU seconds.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from typing import Any

NAN_FILL = "nan_fill_empty=true"


class StepRunner:
    """A Trainer's model, optimisers and loader; ``step()`` runs one training iteration."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from torch.utils.data import DataLoader

        from train.config import load
        from train.data import load_train_records
        from train.sampler import SeededBatches
        from train.steps import train_step
        from train.trainer import Trainer, deterministic

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        overrides = list(spec.get("overrides", []))
        # Not a config key: torch's NaN-filling of every torch.empty under deterministic mode,
        # on as before the trainer turned it off (the "before" rows of train_speed.py).
        fill = NAN_FILL in overrides
        cfg = load(spec["config"], [o for o in overrides if o != NAN_FILL])
        self.trainer = Trainer(cfg, load_train_records(cfg, spec["data"]),
                               tempfile.mkdtemp(prefix="train-speed-"), progress=False)
        self.cfg = self.trainer.cfg
        self.loader = DataLoader(self.trainer.dataset,
                                 batch_sampler=SeededBatches(self.trainer.sampler),
                                 num_workers=self.cfg.num_workers,
                                 persistent_workers=self.cfg.num_workers > 0)
        self._train_step, self._epoch, self._it = train_step, 0, iter(())
        self.trainer.model.train()
        # the trainer's own deterministic block, held for the worker's life
        self._det = deterministic(self.cfg.deterministic)
        self._det.__enter__()
        torch.utils.deterministic.fill_uninitialized_memory = fill

    def _batch(self):
        try:
            return next(self._it)
        except StopIteration:
            self._epoch += 1
            self.trainer.sampler.set_epoch(self._epoch)
            self._it = iter(self.loader)
            return next(self._it)

    def step(self) -> float:
        t0 = time.perf_counter()
        images, labels, modality = self._batch()
        rgb, ir = modality == 0, modality == 1
        import torch

        y = torch.cat([labels[rgb], labels[ir]])
        self._train_step(self.trainer.model, self.trainer.optimizers, images[rgb], images[ir], y,
                         self.cfg)
        return time.perf_counter() - t0


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        runner = StepRunner(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which skips the variant
        print(json.dumps({"ok": False, "reason": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({"ok": True, "actual": spec.get("overrides", [])}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("op") != "time":
            break
        for _ in range(int(cmd.get("warmup", 0))):
            runner.step()
        cpu0, samples = time.process_time(), []
        deadline = time.perf_counter() + float(cmd["budget_s"])
        while len(samples) < int(cmd.get("min_calls", 1)) or time.perf_counter() < deadline:
            samples.append(runner.step())
        print(json.dumps({"samples": samples, "cpu_s": time.process_time() - cpu0}), flush=True)


if __name__ == "__main__":
    main()
