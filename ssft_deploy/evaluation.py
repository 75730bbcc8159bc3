"""The field's evaluation protocols over any feature source (torch model or exported bundle).

Three settings (paper Tables 1, 2, 5):

- ``"transfer"``: SSTN over all queries + gallery at once (Sec. 4.5 "all queries", the headline);
- ``"single-query"``: each query propagates with the gallery only (Eq. 22);
- ``"shared-only"``: shared features, no transfer (the baseline of Table 3).

Distances are Euclidean between L2-normalised features. Features are extracted once per image
(cached by path), so trials, settings and the auxiliary-set sweep (Fig. 4) only re-index them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from tqdm import tqdm

from ssft_deploy.datasets import regdb, sysu
from ssft_deploy.datasets.records import ImageRecord
from ssft_deploy.errors import InputError
from ssft_deploy.features import Features
from ssft_deploy.metrics import eval_regdb, eval_sysu
from ssft_deploy.transfer import SSTN, l2_distances

SETTINGS = ("transfer", "single-query", "shared-only")
METRICS = ("rank1", "rank10", "rank20", "mAP", "mINP")
DEFAULT_PARTS = ("shared", "specific")


@runtime_checkable
class FeatureSource(Protocol):
    """What evaluation needs from a model: ``extract(records)`` -> ``Features`` (or a
    ``(shared, specific)`` pair in record order) and the transfer stage ``transfer(z, idx, w)`` ->
    ``T [N, Dt]``. Optional attributes ``k`` (neighbours per block, default 4) and ``parts``
    (transferred parts, default ``("shared", "specific")``)."""

    def extract(self, records: Sequence[ImageRecord]) -> Features | tuple[np.ndarray, np.ndarray]:
        ...

    def transfer(self, z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        ...


def extract_records(records: Sequence[ImageRecord], preprocessor,
                    extract_array: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                    dims: dict, batch_size: int, progress: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(shared, specific) for ``records`` in order, batched per modality through ``extract_array``
    (a normalised ``[B,3,H,W]`` batch and a modality code -> two arrays); any backend fits."""
    n = len(records)
    shared = np.zeros((n, dims["shared"]), np.float32)
    specific = np.zeros((n, dims["specific"]), np.float32)
    mods = np.array([int(r.modality) for r in records], np.int64)
    with tqdm(total=n, desc="extract", unit="img", disable=not progress) as bar:
        for code in (0, 1):
            rows = np.flatnonzero(mods == code)
            for s in range(0, len(rows), batch_size):
                part = rows[s:s + batch_size]
                batch = preprocessor.crops([records[i].path for i in part])
                batch.raise_errors()
                shared[part], specific[part] = extract_array(batch.array, code)
                bar.update(len(part))
    return shared, specific


class FeatureCache:
    """Features of records, each image extracted once (keyed by path)."""

    def __init__(self, source: FeatureSource) -> None:
        self.source = source
        self._row: dict[str, int] = {}
        self._feats: Features | None = None

    def __call__(self, records: Sequence[ImageRecord]) -> Features:
        """Features of ``records`` in order, extracting only images not seen before."""
        new = list({r.path: r for r in records if r.path not in self._row}.values())
        if new:
            got = self.source.extract(new)
            if not isinstance(got, Features):
                got = Features(got[0], got[1], np.array([r.modality for r in new], np.int64))
            if len(got) != len(new):
                raise InputError(f"feature source returned {len(got)} rows for {len(new)} images")
            base = 0 if self._feats is None else len(self._feats)
            self._row.update({r.path: base + i for i, r in enumerate(new)})
            self._feats = got if self._feats is None else Features.concat([self._feats, got])
        return self._feats.take(np.array([self._row[r.path] for r in records], np.int64))


def make_sstn(source: FeatureSource, affinity: str = "dense") -> SSTN:
    """The SSTN stage of ``source`` (its ``k``, ``parts``, ``max_rows`` and ``transfer_fallback``
    when it has them)."""
    return SSTN(source.transfer, k=int(getattr(source, "k", 4) or 4),
                parts=tuple(getattr(source, "parts", DEFAULT_PARTS) or DEFAULT_PARTS),
                affinity=affinity, max_rows=getattr(source, "max_rows", None),
                fallback=getattr(source, "transfer_fallback", None))


def distances(sstn: SSTN, setting: str, query: Features, gallery: Features) -> np.ndarray:
    """Query x gallery distances ``[Q, G]`` in one setting (see the module docstring)."""
    if setting == "transfer":
        return sstn.auxiliary_distances(query, gallery)
    if setting == "single-query":
        return sstn.single_query_distances(query, gallery)
    if setting == "shared-only":
        return l2_distances(query.shared, gallery.shared)
    raise InputError(f"unknown setting {setting!r}: choose from {SETTINGS}")


def _row(cmc: np.ndarray, mAP: float, mINP: float) -> dict[str, float]:
    # CMC has max_rank 20 entries; percent like the paper's tables
    return {"rank1": 100 * float(cmc[0]), "rank10": 100 * float(cmc[9]),
            "rank20": 100 * float(cmc[19]), "mAP": 100 * mAP, "mINP": 100 * mINP}


def summarise(rows: list[dict[str, float]], cmcs: list[np.ndarray]) -> dict:
    """Mean and std (over trials) of each metric, plus the mean CMC curve (percent)."""
    out = {m: {"mean": float(np.mean([r[m] for r in rows])),
               "std": float(np.std([r[m] for r in rows]))} for m in METRICS}
    out["cmc"] = [100 * float(x) for x in np.mean(cmcs, axis=0)]
    out["per_trial"] = rows
    return out


Scorer = Callable[[np.ndarray, list[ImageRecord], list[ImageRecord]], tuple]


def _scorer_sysu(dist, query, gallery):
    return eval_sysu(dist, [r.pid for r in query], [r.pid for r in gallery],
                     [r.camid for r in query], [r.camid for r in gallery], max_rank=20)


def _scorer_regdb(dist, query, gallery):
    return eval_regdb(dist, [r.pid for r in query], [r.pid for r in gallery], max_rank=20)


def _run_trials(trials: list[tuple[list[ImageRecord], list[ImageRecord]]], feats: FeatureCache,
                sstn: SSTN, settings: Sequence[str], scorer: Scorer, progress: bool) -> dict:
    for s in settings:
        if s not in SETTINGS:
            raise InputError(f"unknown setting {s!r}: choose from {SETTINGS}")
    out = {}
    for setting in settings:
        rows, cmcs, t0 = [], [], time.perf_counter()
        for query, gallery in tqdm(trials, desc=setting, disable=not progress, unit="trial"):
            cmc, mAP, mINP = scorer(distances(sstn, setting, feats(query), feats(gallery)),
                                    query, gallery)
            rows.append(_row(cmc, mAP, mINP))
            cmcs.append(cmc)
        out[setting] = summarise(rows, cmcs)
        out[setting]["seconds"] = time.perf_counter() - t0
    return out


def auxiliary_sweep(sstn: SSTN, query: list[ImageRecord], gallery: list[ImageRecord],
                    feats: FeatureCache, sizes: Sequence[int | str], draws: int = 10,
                    seed: int = 0, scorer: Scorer = _scorer_sysu, progress: bool = True) -> dict:
    """Fig. 4: accuracy against the auxiliary-set size n.

    For one draw the queries are shuffled and cut into groups of n; each group is transferred
    together with the gallery (its other members are the auxiliary set) and every query is scored.
    n = 1 is the single-query setting (Eq. 22); ``"all"`` (or n >= number of queries) is the
    transductive setting. Both are deterministic, so they get one draw; other n get ``draws``.
    """
    qf, gf = feats(query), feats(gallery)
    out = {}
    for size in sizes:
        n = len(query) if size == "all" else int(size)
        if n < 1:
            raise InputError(f"auxiliary-set size must be >= 1 or 'all', got {size!r}")
        n = min(n, len(query))
        rows, cmcs = [], []
        for d in range(1 if n in (1, len(query)) else draws):
            if n == 1:
                dist = sstn.single_query_distances(qf, gf)
            else:
                dist = np.empty((len(query), len(gallery)), np.float32)
                perm = np.random.default_rng([seed, 4, n, d]).permutation(len(query))
                for s in tqdm(range(0, len(perm), n), desc=f"aux n={n} draw {d + 1}",
                              disable=not progress, leave=False):
                    group = np.sort(perm[s:s + n])
                    dist[group] = sstn.auxiliary_distances(qf.take(group), gf)
            cmc, mAP, mINP = scorer(dist, query, gallery)
            rows.append(_row(cmc, mAP, mINP))
            cmcs.append(cmc)
        out[str(size)] = summarise(rows, cmcs)
    return out


def evaluate_sysu(source: FeatureSource, root: str | os.PathLike, mode: str = "all",
                  shots: int = 1, trials: int = 10, settings: Sequence[str] = SETTINGS,
                  aux_sizes: Sequence[int | str] | None = None, seed: int = 0,
                  affinity: str = "dense", progress: bool = True) -> dict:
    """SYSU-MM01 protocol (``mode`` all / indoor, ``shots`` 1 / 10, ``trials`` galleries) in each
    setting: Rank-1/10/20, mAP, mINP (percent) mean and std over trials, as a JSON-able dict.
    ``aux_sizes`` adds the Fig. 4 sweep on trial 0's gallery."""
    records = sysu.test_records(root)
    trial_sets = [sysu.select_trial(records, mode, shots, t, seed) for t in range(trials)]
    feats, sstn = FeatureCache(source), make_sstn(source, affinity)
    t0 = time.perf_counter()
    feats(records)
    result = {"dataset": "sysu", "mode": mode, "shots": shots, "trials": trials, "units": "percent",
              "queries": len(trial_sets[0][0]),
              "gallery": float(np.mean([len(g) for _, g in trial_sets])),
              "extract_seconds": time.perf_counter() - t0,
              "settings": _run_trials(trial_sets, feats, sstn, settings, _scorer_sysu, progress)}
    if aux_sizes:
        q, g = trial_sets[0]
        result["aux_sweep"] = auxiliary_sweep(sstn, q, g, feats, aux_sizes, seed=seed,
                                              scorer=_scorer_sysu, progress=progress)
    return result


def evaluate_regdb(source: FeatureSource, root: str | os.PathLike, trials: int = 10,
                   directions: Sequence[str] = ("v2t", "t2v"), settings: Sequence[str] = SETTINGS,
                   affinity: str = "dense", progress: bool = True) -> dict:
    """RegDB protocol: per direction (visible->thermal, thermal->visible) the test split of trials
    1..``trials``, each setting's metrics (percent) mean and std over trials."""
    feats, sstn = FeatureCache(source), make_sstn(source, affinity)
    result = {"dataset": "regdb", "trials": trials, "units": "percent", "directions": {}}
    for direction in directions:
        trial_sets = [regdb.test_trial(root, t, direction) for t in range(1, trials + 1)]
        result["directions"][direction] = _run_trials(trial_sets, feats, sstn, settings,
                                                      _scorer_regdb, progress)
    return result


def format_table(result: dict) -> str:
    """The paper-style table of an ``evaluate_sysu`` / ``evaluate_regdb`` result."""
    head = f"{'setting':<14}" + "".join(f"{m:>16}" for m in METRICS)
    if result["dataset"] == "sysu":
        blocks = {f"SYSU-MM01 {result['mode']}-search, "
                  f"{'single' if result['shots'] == 1 else 'multi'}-shot, "
                  f"{result['trials']} trials": result["settings"]}
    else:
        names = {"v2t": "Visible to Thermal", "t2v": "Thermal to Visible"}
        blocks = {f"RegDB {names.get(d, d)}, {result['trials']} trials": s
                  for d, s in result["directions"].items()}
    lines = []
    for title, settings in blocks.items():
        lines += [title, head]
        for name, row in settings.items():
            lines.append(f"{name:<14}" + "".join(
                f"{row[m]['mean']:>9.2f} ± {row[m]['std']:<4.2f}" for m in METRICS))
    if "aux_sweep" in result:
        lines += ["auxiliary-set size (Fig. 4, trial 0)", f"{'n':<14}" + "".join(
            f"{m:>16}" for m in METRICS)]
        for n, row in result["aux_sweep"].items():
            lines.append(f"{n:<14}" + "".join(
                f"{row[m]['mean']:>9.2f} ± {row[m]['std']:<4.2f}" for m in METRICS))
    return "\n".join(lines)
