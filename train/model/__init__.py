"""The cm-SSFT model (Sec. 3) and its checkpoint I/O."""

from __future__ import annotations

from train.model.checkpoint import FORMAT, load_model, read_checkpoint, save_checkpoint
from train.model.ssft import SSFTModel, modality_name
from train.model.sstn import affinity, neighbour_weights, neighbours, pad, propagate

__all__ = ["FORMAT", "SSFTModel", "affinity", "load_model", "modality_name", "neighbour_weights",
           "neighbours", "pad", "propagate", "read_checkpoint", "save_checkpoint"]
