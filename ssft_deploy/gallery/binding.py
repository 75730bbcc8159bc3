"""What binds a gallery to the bundle whose features it holds: feature dims and a model hash.

A gallery filled by one model is meaningless to another (a 2048-d gallery under a 512-d runtime
fails every search; two models of equal dims rank each other's features at random), so every store
records its binding and refuses to open under a different one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from ssft_deploy.bundle import EXTRACTORS
from ssft_deploy.errors import GalleryError

log = logging.getLogger("ssft_deploy.gallery")


@dataclass(frozen=True)
class GalleryBinding:
    """Feature dims of the bundle (shared, specific) and its model hash (None: not recorded)."""

    shared_dim: int
    specific_dim: int
    model_hash: str | None = None

    @property
    def dims(self) -> tuple[int, int]:
        return self.shared_dim, self.specific_dim

    def to_dict(self) -> dict[str, Any]:
        return {"shared_dim": self.shared_dim, "specific_dim": self.specific_dim,
                "model_hash": self.model_hash}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> GalleryBinding:
        try:
            h = d.get("model_hash")
            if h is not None and not isinstance(h, str):
                raise TypeError("model_hash must be a string")
            return cls(int(d["shared_dim"]), int(d["specific_dim"]), h)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise GalleryError(f"{where} records a malformed bundle binding {d!r}: {exc}") from exc

    def check(self, expected: GalleryBinding, where: str) -> GalleryBinding:
        """This (recorded) binding if ``expected`` may use it, else GalleryError. A record without
        a model hash is accepted on matching dims (logged) and takes ``expected``'s hash."""
        if self.dims != expected.dims:
            raise GalleryError(
                f"{where} holds features of dims (shared, specific) {self.dims}, but the bundle "
                f"produces {expected.dims}: open a gallery built with this bundle, or rebuild it")
        if self.model_hash and expected.model_hash and self.model_hash != expected.model_hash:
            raise GalleryError(
                f"{where} was built by another model (hash {self.model_hash[:12]}..., this bundle "
                f"{expected.model_hash[:12]}...): its features do not compare with this bundle's; "
                f"rebuild the gallery with this bundle")
        if not self.model_hash and expected.model_hash:
            log.warning("%s records no model hash; accepting it on matching dims %s", where,
                        self.dims)
        return GalleryBinding(*self.dims, self.model_hash or expected.model_hash)


def as_binding(dims: Any, model_hash: str | None = None) -> GalleryBinding:
    """A GalleryBinding from a binding, a Bundle, a ``{"shared":, "specific":}`` dict or a
    ``(shared, specific)`` pair."""
    if isinstance(dims, GalleryBinding):
        return dims if model_hash is None else GalleryBinding(*dims.dims, model_hash)
    if hasattr(dims, "manifest") and hasattr(dims, "dims"):  # a loaded Bundle
        return bundle_binding(dims)
    try:
        pair = (dims["shared"], dims["specific"]) if isinstance(dims, dict) else tuple(dims)
        ds, dp = (int(v) for v in pair)
    except (KeyError, TypeError, ValueError) as exc:
        raise GalleryError(f"dims must be (shared, specific), a bundle or a binding, got "
                           f"{dims!r}") from exc
    if ds < 1 or dp < 1:
        raise GalleryError(f"feature dims must be positive, got {(ds, dp)}")
    return GalleryBinding(ds, dp, model_hash)


def bundle_binding(bundle: Any) -> GalleryBinding:
    """The binding of a loaded Bundle: its dims and a hash of its fp32 extractor graphs (the
    features' source; other precisions of the same bundle pass its parity gate)."""
    digest = hashlib.sha256(b"ssft-model/1")
    for graph in EXTRACTORS:
        digest.update(f"|{graph}:{bundle.entry(graph, 'fp32').sha256}".encode())
    return GalleryBinding(int(bundle.dims["shared"]), int(bundle.dims["specific"]),
                          digest.hexdigest())
