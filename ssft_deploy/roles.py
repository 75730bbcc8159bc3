"""Each graph's role, fingerprinted: its outputs on a fixed probe input.

The export records, in the manifest's ``model`` section (``model["probe"]``), the first
:data:`KEEP` values of every output of the fp32 graphs (``extractor_rgb``, ``extractor_ir``,
``transfer``) on a deterministic probe input (:func:`probe_feeds`, no random generator involved).
When an engine opens (``engines.open_engine``), it runs the probe once and its outputs must be
close to its own graph's fingerprint (cosine >= :data:`ROLE_MIN_COS` of the precision, min over
outputs) and, for an extractor, closer to it than to the other extractor's: a graph file copied
into another slot, with every sha256 updated, is refused. The fingerprints sit in the ``model``
section because every gate verdict is bound to that section's digest: editing a fingerprint
voids every verdict.

Cost at open: one inference per engine (batch 1 for an extractor, ``2k + 2`` rows for the
transfer graph), once per (variant, graph, backend) and bundle object.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ssft_deploy.errors import BundleError

log = logging.getLogger("ssft_deploy.roles")

PROBE_KEY = "probe"
PROBE_VERSION = 1
KEEP = 256  # values kept per output: enough to tell roles apart, small in the manifest
#: least cosine to its own fingerprint, per precision. The probe is a synthetic image, further
#: from the data than the gate's held-out images, so these sit below the gate's extractor bounds.
ROLE_MIN_COS = {"fp32": 0.999, "fp16": 0.99, "bf16": 0.98, "int8": 0.9}
_OTHER = {"extractor_rgb": "extractor_ir", "extractor_ir": "extractor_rgb"}


def probe_feeds(graph: str, model: Any) -> dict[str, np.ndarray]:
    """The fixed probe input of ``graph`` for a bundle's ``ModelInfo`` (closed-form patterns)."""
    if graph.startswith("extractor"):
        h, w = model.input_size
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        chans = [0.5 + 0.5 * np.sin(2 * np.pi * ((c + 1) * x / w + (3 - c) * y / h) + c)
                 for c in range(3)]
        img = (np.stack(chans) - np.reshape(model.mean, (3, 1, 1))) / np.reshape(model.std,
                                                                                  (3, 1, 1))
        return {"images": img[None].astype(np.float32)}
    width = 2 * model.specific_dim + model.shared_dim
    k2 = model.transfer_width or 2 * model.k
    n = k2 + 1
    i, j = np.mgrid[0:n, 0:width].astype(np.float64)
    z = np.sin(0.37 * i + 0.11 * j + 0.5) + 0.25 * np.cos(0.05 * i * j)
    rows, cols = np.mgrid[0:n, 0:k2]
    w = (cols + 1.0) / (k2 * (k2 + 1) / 2.0)
    return {"z": z.astype(np.float32), "idx": ((rows + cols + 1) % n).astype(np.int64),
            "w": w.astype(np.float32)}


def fingerprint(outputs: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Output name -> its first :data:`KEEP` values (7 significant digits)."""
    return {name: [float(f"{v:.7g}") for v in np.asarray(a, np.float64).ravel()[:KEEP]]
            for name, a in outputs.items()}


def fingerprints(paths: Mapping[str, str | os.PathLike], model: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """The ``model["probe"]`` section for the fp32 ONNX graphs at ``paths`` (graph -> file),
    run on ONNX Runtime CPU; ``model`` is the manifest's ``model`` section."""
    from ssft_deploy.bundle import ModelInfo
    from ssft_deploy.engines.ort import OrtCpuEngine

    info = ModelInfo.from_manifest(model)
    graphs = {}
    for graph, path in paths.items():
        with OrtCpuEngine(path, intra_op_threads=1) as eng:
            graphs[graph] = fingerprint(eng.run(probe_feeds(graph, info)))
    return {"version": PROBE_VERSION, "keep": KEEP, "graphs": graphs}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    c = float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
    return c if math.isfinite(c) else 0.0


def similarity(outputs: Mapping[str, np.ndarray], recorded: Any) -> float:
    """Min over the recorded outputs of the cosine between ``outputs`` and a fingerprint (0 for
    a missing output, a length mismatch or a malformed record)."""
    if not isinstance(recorded, dict) or not recorded:
        return 0.0
    worst = 1.0
    for name, values in recorded.items():
        if name not in outputs or not isinstance(values, list):
            return 0.0
        try:
            want = np.asarray(values, np.float64)
        except (TypeError, ValueError):
            return 0.0
        got = np.asarray(outputs[name], np.float64).ravel()[:KEEP]
        if want.ndim != 1 or len(got) != len(want):
            return 0.0
        worst = min(worst, _cos(got, want))
    return worst


def min_cos(precision: str) -> float:
    """The role bound of ``precision`` (the loosest for a precision outside the table)."""
    from ssft_deploy.thresholds import variant_precision

    return ROLE_MIN_COS.get(variant_precision(precision) or precision,
                            min(ROLE_MIN_COS.values()))


def role_problem(probe: Any, graph: str, outputs: Mapping[str, np.ndarray],
                 precision: str) -> str | None:
    """Why ``outputs`` (of the probe) are not ``graph``'s, or None when they are."""
    graphs = probe.get("graphs") if isinstance(probe, dict) else None
    if not isinstance(graphs, dict) or graph not in graphs:
        return f"the manifest's role fingerprints have no {graph!r} entry"
    own, floor = similarity(outputs, graphs[graph]), min_cos(precision)
    other = _OTHER.get(graph)
    theirs = similarity(outputs, graphs[other]) if other in graphs else -1.0
    if own >= floor and theirs <= own:
        return None
    why = (f"its outputs on the fixed probe input have cosine {own:.4f} to the {graph} "
           f"fingerprint recorded at export (needs >= {floor:g} at {precision})")
    if theirs > own:
        why += f" and {theirs:.4f} to {other}'s: it behaves like {other}"
    return why


def check_role(bundle: Any, graph: str, variant: str, precision: str, engine: Any) -> None:
    """BundleError unless ``engine`` (just opened on ``graph`` of ``bundle``'s ``variant`` at
    ``precision``) matches its role's fingerprint; a warning (once per bundle) when the manifest
    has none."""
    key = ("role", variant, graph, getattr(engine, "name", ""))
    if key in bundle._verified:
        return
    probe = (bundle.manifest.get("model") or {}).get(PROBE_KEY)
    if probe is None:
        if ("role",) not in bundle._warned:
            bundle._warned.add(("role",))
            log.warning("bundle %s has no role fingerprints (exported before they were "
                        "recorded): a graph file swapped into another slot cannot be detected; "
                        "re-export with ssft-export to add them", bundle.root)
        return
    feeds = probe_feeds(graph, bundle.model)
    rows = len(next(iter(feeds.values())))
    if getattr(engine, "max_batch", None) is not None and rows > engine.max_batch:
        log.warning("%s/%s: its engine takes at most %d rows, the role probe needs %d: role "
                    "not checked", variant, graph, engine.max_batch, rows)
        return
    problem = role_problem(probe, graph, engine.run(feeds), precision)
    if problem:
        raise BundleError(f"bundle {bundle.root}: {variant}/{graph} "
                          f"({getattr(engine, 'path', '?')}) does not behave like {graph}: "
                          f"{problem}. The file in this slot is not the graph that was exported "
                          "and gated for it; re-export with ssft-export")
    with bundle._lock:
        bundle._verified.add(key)
