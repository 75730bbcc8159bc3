"""Model bundles: ``manifest.json`` plus graph / engine files, each pinned by its sha256.

The export side writes bundles through :func:`write_manifest` (staged, then
:func:`publish_manifest` once the parity gate has run); the runtime reads them with
:func:`load_bundle`. Every file is hash-checked on first use and must lie inside the bundle folder
(symlinks resolved), graph I/O is checked against the manifest when an engine opens it, TensorRT
engines are checked against the GPU and TensorRT version of this machine, and a variant opens only
when the manifest records a ``pass`` verdict of the parity gate for exactly its files (unless
``allow_ungated``). Any mismatch is a :class:`~ssft_deploy.errors.BundleError` that says how to
fix it (re-export, re-verify).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ssft_deploy.bundle_io import (  # noqa: F401  (the manifest writers are part of this API)
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    STAGING_NAME,
    inside,
    publish_manifest,
    unpublish_manifest,
    write_manifest,
)
from ssft_deploy.bundle_io import read_manifest as _read_manifest
from ssft_deploy.errors import BundleError
from ssft_deploy.trt_platform import (  # noqa: F401  (part of this API)
    REBUILD_TRT,
    TrtPlatform,
    check_engine_platform,
    current_trt_platform,
)
from ssft_deploy.verdicts import gate_record, reverify_hint, ungated_reason

log = logging.getLogger("ssft_deploy.bundle")

GRAPHS = ("extractor_rgb", "extractor_ir", "transfer")
EXTRACTORS = GRAPHS[:2]
REEXPORT = "re-export with ssft-export"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """The model facts a runtime needs: input size (h, w), normalisation, feature dims, k."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shared_dim: int
    specific_dim: int
    transfer_dim: int
    k: int
    transfer_parts: tuple[str, ...]
    arch: str = ""
    transfer_width: int = 0  # neighbours per row of the transfer graph; 0 = 2k (older bundles)

    @property
    def dims(self) -> dict[str, int]:
        return {"shared": self.shared_dim, "specific": self.specific_dim,
                "transfer": self.transfer_dim}

    @classmethod
    def from_manifest(cls, model: Mapping[str, Any]) -> ModelInfo:
        try:
            h, w = (int(v) for v in model["input_size"])
            mean = tuple(float(v) for v in model["mean"])
            std = tuple(float(v) for v in model["std"])
            info = cls(input_size=(h, w), mean=mean, std=std,  # type: ignore[arg-type]
                       shared_dim=int(model["shared_dim"]),
                       specific_dim=int(model["specific_dim"]),
                       transfer_dim=int(model["transfer_dim"]), k=int(model["k"]),
                       transfer_parts=tuple(model.get("transfer_parts", ("shared", "specific"))),
                       arch=str(model.get("arch", "")),
                       transfer_width=int(model.get("transfer_width", 2 * int(model["k"]))))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest 'model' section is incomplete or malformed ({exc!r}); "
                              f"{REEXPORT}") from exc
        if len(mean) != 3 or len(std) != 3 or min(h, w) <= 0 or any(s <= 0 for s in std):
            raise BundleError(f"manifest 'model' has a bad input_size/mean/std; {REEXPORT}")
        if info.transfer_width not in (2 * info.k, 2 * info.k + 1):
            raise BundleError(f"manifest 'model' transfer_width {info.transfer_width} is neither "
                              f"2k nor 2k + 1 (k = {info.k}); {REEXPORT}")
        return info

    def expected_io(self, graph: str) -> tuple[dict[str, tuple], dict[str, tuple]]:
        """``(inputs, outputs)`` of a graph as name -> (shape with -1 dynamic, dtype name)."""
        h, w = self.input_size
        ds, dp, dt, k2 = self.shared_dim, self.specific_dim, self.transfer_dim, self.transfer_width
        if graph.startswith("extractor"):
            return ({"images": ((-1, 3, h, w), "float32")},
                    {"shared": ((-1, ds), "float32"), "specific": ((-1, dp), "float32")})
        if graph == "transfer":
            return ({"z": ((-1, 2 * dp + ds), "float32"), "idx": ((-1, k2), "int64"),
                     "w": ((-1, k2), "float32")},
                    {"transferred": ((-1, dt), "float32")})
        raise BundleError(f"unknown graph {graph!r}; expected one of {GRAPHS}")


@dataclass(frozen=True)
class FileEntry:
    """One file of a variant: ``format`` is ``onnx`` or ``tensorrt``; ``meta`` keeps the rest."""

    graph: str
    variant: str
    file: str
    sha256: str
    format: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Bundle:
    """A loaded bundle; files are verified lazily (hash on first use) and thread-safely."""

    root: Path
    manifest: dict
    model: ModelInfo
    variants: dict[str, dict[str, FileEntry]]
    allow_ungated: bool = False
    check_roles: bool = True  # engines.open_engine checks each graph's role (ssft_deploy.roles)
    _warned: set = field(default_factory=set, repr=False)  # variants warned about (or gating)
    _verified: set = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.model.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.model.std

    @property
    def dims(self) -> dict[str, int]:
        return self.model.dims

    @property
    def k(self) -> int:
        return self.model.k

    @property
    def transfer_parts(self) -> tuple[str, ...]:
        return self.model.transfer_parts

    def has(self, graph: str, variant: str) -> bool:
        return graph in self.variants.get(variant, {})

    def gate_record(self, variant: str) -> dict | None:
        """The parity gate's record of ``variant`` (``manifest["gate"]["variants"]``), if any."""
        return gate_record(self.manifest, variant)

    def ungated_reason(self, variant: str) -> str | None:
        """None when ``variant`` passed the gate for exactly its current files; else why not."""
        return ungated_reason(self.manifest, variant,
                              {g: e.sha256 for g, e in self.variants.get(variant, {}).items()})

    def passed_variants(self) -> list[str]:
        """Variants that passed the parity gate (the ones that open without allow_ungated)."""
        return [v for v in self.variants if self.ungated_reason(v) is None]

    def check_gate(self, variant: str) -> None:
        """BundleError unless ``variant`` passed the parity gate (or ``allow_ungated``)."""
        reason = self.ungated_reason(variant)
        if reason is None:
            return
        if not self.allow_ungated:
            raise BundleError(f"bundle {self.root}: variant {variant!r} {reason}; "
                              + reverify_hint(self.root, variant))
        if variant not in self._warned:
            self._warned.add(variant)
            log.warning("bundle %s: opening variant %r although it %s (allow_ungated=True)",
                        self.root, variant, reason)

    def entry(self, graph: str, variant: str = "fp32") -> FileEntry:
        """The manifest entry of ``graph`` in ``variant`` (``fp32``, ``fp16``, ``trt-fp16``...)."""
        if variant not in self.variants:
            raise BundleError(f"bundle {self.root} has no {variant!r} variant (it has "
                              f"{sorted(self.variants)}); {REEXPORT} and the matching option")
        files = self.variants[variant]
        if graph not in files:
            raise BundleError(f"bundle {self.root} variant {variant!r} has no {graph!r} graph; "
                              f"{REEXPORT}")
        return files[graph]

    def file(self, graph: str, precision: str = "fp32",
             platform: Callable[[], TrtPlatform] | None = None) -> Path:
        """Path of ``graph`` in variant ``precision``, its sha256 verified on first use.

        TensorRT engines are also checked against ``platform()`` (default: probe this machine).
        """
        ent = self.entry(graph, precision)
        path = inside(self.root, ent.file, f"{precision}/{graph}")
        key = (precision, graph)
        with self._lock:
            if key not in self._verified:
                verify_entry(self.root, ent)
                self._verified.add(key)
        if ent.format == "tensorrt":
            check_engine_platform(ent, (platform or current_trt_platform)())
        self.check_gate(precision)
        return path

    def check_io(self, graph: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                 source: str = "") -> None:
        """Check a graph's I/O specs (objects with ``shape``, ``dtype``) against the manifest."""
        want_in, want_out = self.model.expected_io(graph)
        label = source or graph
        for kind, want, got in (("input", want_in, inputs), ("output", want_out, outputs)):
            if set(want) != set(got):
                raise BundleError(f"{label}: {kind}s are {sorted(got)}, the bundle format needs "
                                  f"{sorted(want)}; {REEXPORT}")
            for name, (shape, dtype) in want.items():
                spec = got[name]
                have = tuple(int(d) for d in spec.shape)
                if len(have) != len(shape) or any(
                        w != -1 and h != -1 and w != h for w, h in zip(shape, have)):
                    hint = ""
                    if name == "images":
                        hint = (f" (the manifest input_size is {list(self.model.input_size)}: "
                                "the graph comes from a model with another input size)")
                    raise BundleError(f"{label}: {kind} {name!r} has shape {list(have)}, "
                                      f"expected {list(shape)}{hint}; {REEXPORT}")
                if str(spec.dtype) != dtype:
                    raise BundleError(f"{label}: {kind} {name!r} is {spec.dtype}, expected "
                                      f"{dtype}; {REEXPORT}")

    def verify(self) -> None:
        """Hash-check every file listed in the manifest (the lazy check, done eagerly)."""
        for variant, files in self.variants.items():
            for graph, ent in files.items():
                with self._lock:
                    if (variant, graph) not in self._verified:
                        verify_entry(self.root, ent)
                        self._verified.add((variant, graph))


def verify_entry(root: Path, ent: FileEntry) -> None:
    """Raise BundleError when the entry's file is outside the bundle, missing, or its sha256
    differs."""
    path = inside(root, ent.file, f"bundle file of {ent.variant}/{ent.graph}:")
    if not path.is_file():
        raise BundleError(f"bundle file {path} ({ent.variant}/{ent.graph}) is missing; {REEXPORT}")
    digest = sha256_file(path)
    if digest != ent.sha256:
        raise BundleError(f"bundle file {path} does not match its sha256 in the manifest "
                          f"(file changed or corrupt); {REEXPORT}")


def _parse_variants(root: Path, variants: Any) -> dict[str, dict[str, FileEntry]]:
    if not isinstance(variants, dict) or not variants:
        raise BundleError(f"manifest in {root} lists no variants; {REEXPORT}")
    out: dict[str, dict[str, FileEntry]] = {}
    for vname, files in variants.items():
        if not isinstance(files, dict):
            raise BundleError(f"manifest variant {vname!r} is malformed; {REEXPORT}")
        out[vname] = {}
        for graph, item in files.items():
            try:
                name = str(item["file"])
                ent = FileEntry(graph=graph, variant=vname, file=name, sha256=str(item["sha256"]),
                                format=str(item.get("format", "onnx")),
                                meta={k: v for k, v in item.items()
                                      if k not in ("file", "sha256", "format")})
            except (KeyError, TypeError) as exc:
                raise BundleError(f"manifest entry {vname}/{graph} needs 'file' and 'sha256'; "
                                  f"{REEXPORT}") from exc
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"manifest entry {vname}/{graph} points outside the bundle")
            out[vname][graph] = ent
    return out


def load_bundle(path: str | os.PathLike | Bundle, verify: bool = False, *,
                allow_ungated: bool = False) -> Bundle:
    """Read ``path/manifest.json`` (or a manifest path); ``verify=True`` hash-checks every file.

    A variant opens (``Bundle.file``) only if the parity gate passed it; a bundle with no such
    variant is refused here. ``allow_ungated=True`` opens them anyway, with a logged warning.
    """
    if isinstance(path, Bundle):
        if allow_ungated and not path.allow_ungated:
            return replace(path, allow_ungated=True)
        return path
    bundle = _read_bundle(Path(path), allow_ungated)
    if not allow_ungated and not bundle.passed_variants():
        reasons = "; ".join(f"{v} {bundle.ungated_reason(v)}" for v in bundle.variants)
        raise BundleError(f"bundle {bundle.root}: no variant passed the parity gate ({reasons}); "
                          f"re-export, or {reverify_hint(bundle.root, 'VARIANT')}")
    ungated = [v for v in bundle.variants if bundle.ungated_reason(v) is not None]
    if allow_ungated and ungated:
        log.warning("bundle %s: variants %s have no pass verdict of the parity gate; "
                    "allow_ungated=True opens them anyway", bundle.root, ungated)
    if verify:
        bundle.verify()
    return bundle


def open_for_gate(path: str | os.PathLike, manifest: Mapping[str, Any] | None = None) -> Bundle:
    """The bundle as the parity gate reads it (export only): every variant opens, no warning.
    ``manifest`` gates a staged manifest (not yet published) of the folder ``path``."""
    if manifest is None:
        bundle = _read_bundle(Path(path), allow_ungated=True)
    else:
        root = Path(path).resolve()
        bundle = Bundle(root=root, manifest=dict(manifest),
                        model=ModelInfo.from_manifest(manifest.get("model") or {}),
                        variants=_parse_variants(root, manifest.get("variants")),
                        allow_ungated=True)
    bundle._warned.update(bundle.variants)  # the gate opens them to judge them: no warning
    bundle.check_roles = False  # the gate measures every variant against the reference itself
    return bundle


def _read_bundle(p: Path, allow_ungated: bool) -> Bundle:
    manifest_path = p if p.name == MANIFEST_NAME else p / MANIFEST_NAME
    if not manifest_path.is_file():
        hint = ""
        if (manifest_path.parent / STAGING_NAME).is_file():
            hint = (f" ({STAGING_NAME} is there: the export stopped before its parity gate "
                    "finished)")
        raise BundleError(f"no {MANIFEST_NAME} in {manifest_path.parent}: not a model bundle"
                          f"{hint} (create one with ssft-export)")
    root = manifest_path.parent.resolve()
    manifest = _read_manifest(inside(root, MANIFEST_NAME, "the manifest"))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{manifest_path} has format {found!r}, this runtime reads "
                          f"{MANIFEST_FORMAT!r}; {REEXPORT}")
    return Bundle(root=root, manifest=manifest,
                  model=ModelInfo.from_manifest(manifest.get("model") or {}),
                  variants=_parse_variants(root, manifest.get("variants")),
                  allow_ungated=allow_ungated)
