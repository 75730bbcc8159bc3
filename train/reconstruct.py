"""Fig. 3 of the paper: what the shared and the specific features carry, seen through the
reconstruction decoders (Eq. 16).

For N RGB and N IR test images: the original, then ``De^m`` applied to ``[P^m; H^m]`` with the
specific map zeroed (shared only), with the shared map zeroed (specific only), and to both."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ssft_deploy.datasets.records import ImageRecord
from ssft_deploy.errors import SSFTError
from ssft_deploy.modality import modality_name
from ssft_deploy.preprocess import MEAN, STD, Preprocessor

COLUMNS = ("original", "shared only", "specific only", "both")


def pick(records: Sequence[ImageRecord], n: int) -> list[ImageRecord]:
    """The first image of the first ``n`` identities of each modality (sorted by path)."""
    out: list[ImageRecord] = []
    for m in (0, 1):
        seen: set[int] = set()
        for r in sorted((r for r in records if r.modality == m), key=lambda r: str(r.path)):
            if r.pid not in seen and len(seen) < n:
                seen.add(r.pid)
                out.append(r)
    return out


@torch.no_grad()
def reconstructions(model, images: torch.Tensor, modality: int) -> list[torch.Tensor]:
    """``[original, shared only, specific only, both]`` as normalised ``[B,3,H,W]`` tensors."""
    if getattr(model, "decoders", None) is None:
        raise SSFTError("this model has no reconstruction decoders (config reconstruction=false)")
    m = modality_name(modality)
    b = model.backbone
    x = b.conv1[m](images)
    h, p = b.shared(x), b.specific[m](x)
    dec = model.decoders[m]
    return [images, dec(torch.zeros_like(p), h), dec(p, torch.zeros_like(h)), dec(p, h)]


def _to_image(x: torch.Tensor) -> np.ndarray:
    std, mean = np.asarray(STD).reshape(3, 1, 1), np.asarray(MEAN).reshape(3, 1, 1)
    return np.clip(x.numpy() * std + mean, 0, 1).transpose(1, 2, 0)


def figure(model, records: Sequence[ImageRecord], n: int, path: str | Path) -> Path:
    """Write the Fig. 3 picture of ``n`` RGB and ``n`` IR images of ``records`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = pick(records, n)
    if not chosen:
        raise SSFTError("no images to reconstruct")
    cfg = model.config
    pre = Preprocessor((cfg.height, cfg.width))
    model.eval()
    rows = []
    for m in (0, 1):
        recs = [r for r in chosen if r.modality == m]
        if recs:
            batch = torch.from_numpy(np.stack([pre.one(r.path) for r in recs]))
            outs = reconstructions(model, batch, m)
            rows += [(modality_name(m), [o[i] for o in outs]) for i in range(len(recs))]
    fig, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(1.3 * len(COLUMNS) + 0.6,
                                                                 2.1 * len(rows)), squeeze=False)
    for r, (name, cells) in enumerate(rows):
        for c, cell in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(_to_image(cell))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=8)
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.suptitle("decoders' reconstructions (Eq. 16) from shared, specific, both", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
