"""Checkpoint I/O: ``model.pth`` ``{"format": "ssft/1", "config", "state_dict"}`` (read with
``weights_only=True``) and its ``.safetensors`` twin (config as JSON metadata)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ssft_deploy.errors import CheckpointError, SSFTError
from ssft_deploy.fileio import durable_write
from train.config import SSFTConfig
from train.model.ssft import SSFTModel

FORMAT = "ssft/1"
TRAIN_FORMAT = "ssft-train/1"   # trainer state; its "model" entry is a FORMAT checkpoint


def atomic_save(obj: Any, path: str | os.PathLike, saver=torch.save) -> None:
    """``saver(obj, open_file)`` through ``ssft_deploy.fileio.durable_write`` (no half-written
    file survives a crash), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable_write(path, lambda fh: saver(obj, fh))


def checkpoint_dict(model: SSFTModel) -> dict[str, Any]:
    """The ``ssft/1`` payload of ``model`` (CPU tensors, plain config values)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "config": model.config.to_dict(), "state_dict": state}


def save_checkpoint(model: SSFTModel, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` (.pth) and its ``.safetensors`` twin; returns both paths."""
    from safetensors.torch import save

    payload = checkpoint_dict(model)
    pth = Path(path)
    twin = pth.with_suffix(".safetensors")
    atomic_save(payload, pth)
    meta = {"format": FORMAT, "config": json.dumps(payload["config"])}
    atomic_save(payload["state_dict"], twin, lambda obj, fh: fh.write(save(obj, metadata=meta)))
    return pth, twin


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path} is not an ssft checkpoint (metadata format "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: config metadata is not JSON: {exc}") from None
    return {"format": FORMAT, "config": config, "state_dict": state}


def _read_pth(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, code objects
        raise CheckpointError(f"{path} is not a readable weights-only checkpoint "
                              f"(truncated or foreign?): {_first_line(exc)}") from None
    if isinstance(data, dict) and data.get("format") == TRAIN_FORMAT:
        data = data.get("model")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not an ssft checkpoint (format {found!r}, expected "
                              f"{FORMAT!r}); train one with ssft-train")
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("state_dict"), dict):
        raise CheckpointError(f"{path} lacks 'config' or 'state_dict'")
    return data


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"format", "config", "state_dict"}`` from a .pth or .safetensors file (CheckpointError
    for a missing, truncated, foreign or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_pth(path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SSFTModel:
    """The model of a checkpoint, in eval mode on ``device`` (CPU by default)."""
    data = read_checkpoint(path)
    try:
        config = SSFTConfig.from_dict(data["config"])
        model = SSFTModel(config, load_pretrained=False)
    except SSFTError as exc:
        raise CheckpointError(f"{path}: its config does not build a model: {exc}") from None
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model of its config: "
                              f"{_first_line(exc)}") from None
    return model.to(device).eval()
