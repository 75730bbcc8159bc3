"""Which model scores which RegDB trial.

RegDB's ten trials are ten different train / test identity splits, so a model trained on trial t
has seen about half of every other trial's test identities: it is scored on trial t only. A
checkpoint records its trial in its config (``dataset``, ``regdb_trial``), an exported bundle in
its manifest (``model.trained_on``); a folder of per-trial checkpoints (``ssft-train
--regdb-trials``) scores each trial with its own model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ssft_deploy.errors import SSFTError
from train.model import read_checkpoint


class TrialMixError(SSFTError):
    """Models and RegDB trials that do not pair one to one."""


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def trained_on(path: str | Path) -> tuple[str | None, int | None]:
    """(dataset, RegDB trial or None) a checkpoint file or bundle folder was trained on; (None,
    None) when a bundle does not say."""
    path = Path(path)
    if path.is_dir():
        try:
            model = json.loads((path / "manifest.json").read_text()).get("model", {})
        except (OSError, ValueError, AttributeError):
            return None, None   # the runtime reports a broken bundle when it opens it
        info = model.get("trained_on") if isinstance(model, dict) else None
        if not isinstance(info, dict):
            return None, None
        return info.get("dataset"), info.get("regdb_trial")
    cfg = read_checkpoint(path)["config"]
    dataset = cfg.get("dataset", "sysu")
    return dataset, (int(cfg.get("regdb_trial", 1)) if dataset == "regdb" else None)


def trial_checkpoints(folder: str | Path) -> list[Path]:
    """The per-trial checkpoints of a folder: ``*/model.pth`` in its subfolders (as
    ``ssft-train --regdb-trials`` writes them) and ``*.pth`` files in it."""
    folder = Path(folder)
    found = sorted(folder.glob("*/model.pth")) + sorted(
        p for p in folder.glob("*.pth") if p.name != "checkpoint.pth")
    if not found:
        raise TrialMixError(f"{folder} is neither a bundle (no manifest.json) nor a folder of "
                            "per-trial checkpoints (no */model.pth or *.pth)")
    return found


def regdb_models(path: str | Path, trials: int | None) -> dict[int, Path]:
    """``{trial: model path}`` to score on RegDB. One model trained on RegDB: its own trial (an
    explicit ``trials`` is refused); a folder: one checkpoint per trial, each on its own trial;
    a model trained on another dataset saw no RegDB identity: trials 1..``trials`` (default 10)."""
    path = Path(path)
    if path.is_dir() and not is_bundle(path):
        if trials is not None:
            raise TrialMixError("--trials does not apply to a folder of per-trial checkpoints: "
                                "each checkpoint is scored on the trial it was trained on")
        out: dict[int, Path] = {}
        for ckpt in trial_checkpoints(path):
            dataset, trial = trained_on(ckpt)
            if dataset != "regdb":
                raise TrialMixError(f"{ckpt} was trained on {dataset!r}, not on a RegDB trial: "
                                    "a folder must hold one RegDB checkpoint per trial")
            if trial in out:
                raise TrialMixError(f"{out[trial]} and {ckpt} were both trained on RegDB trial "
                                    f"{trial}: keep one checkpoint per trial")
            out[trial] = ckpt
        return dict(sorted(out.items()))
    dataset, trial = trained_on(path)
    if dataset is None:
        raise TrialMixError(f"{path} does not record which data its model was trained on "
                            "(exported before trials were recorded): evaluate its checkpoint, "
                            "or re-export it with ssft-export")
    if dataset == "regdb":
        if trials is not None:
            raise TrialMixError(f"{path} was trained on RegDB trial {trial}, so it is scored on "
                                f"that trial only (other trials' test identities include its "
                                f"training identities): drop --trials, or pass a folder of "
                                f"per-trial checkpoints (ssft-train --regdb-trials 1-10)")
        return {int(trial): path}
    return {t: path for t in range(1, (10 if trials is None else trials) + 1)}
