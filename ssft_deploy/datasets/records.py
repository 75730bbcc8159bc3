"""One image of a re-identification dataset: where it is, who it shows, which camera, which modality."""

from __future__ import annotations

from dataclasses import dataclass

from ssft_deploy.modality import IR, RGB  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class ImageRecord:
    """``path`` to the image file, person id ``pid``, camera id ``camid`` (SYSU: 1..6;
    RegDB: 1 visible, 2 thermal) and ``modality`` (0 = RGB, 1 = IR)."""

    path: str
    pid: int
    camid: int
    modality: int

    @property
    def is_ir(self) -> bool:
        return self.modality == IR
