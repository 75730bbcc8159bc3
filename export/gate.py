"""The parity gate: every variant of a bundle against a reference, judged, recorded, published.

The reference is any (extract, transfer) pair: the PyTorch fp32 model for real exports
(:func:`torch_reference`), a numpy twin for the test bundles. :func:`gate_variants` measures
(``export.parity``) and judges (``export.thresholds``) each variant opened through the runtime's
own engines (``export.variants``); :func:`finalize` stages a new bundle's manifest, runs the gate,
records the verdicts and publishes ``manifest.json`` last (an exception leaves nothing loadable);
:func:`verify_bundle` (``ssft-verify``) re-runs it on an existing bundle.

Manifest record per variant (``manifest["gate"]["variants"][name]``): ``verdict`` (pass / fail),
``failed`` (checks missed), ``error`` (when the variant could not be run), ``figures``,
``thresholds``, ``precision``, ``backend``, ``reference`` (name, rank1, mAP), ``data`` (source,
queries, gallery), ``files`` (graph -> sha256 judged), ``model_sha256``, ``time``, ``tool``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from export import variants as reg
from export.errors import GateError
from export.images import HeldOut
from export.parity import ExtractFn, TransferFn, compare, ranking, run_stages, torch_fns
from export.thresholds import thresholds
from ssft_deploy.bundle import Bundle, open_for_gate, publish_manifest, write_manifest
from ssft_deploy.errors import SSFTError
from ssft_deploy.verdicts import GATE_KEY, model_digest


@dataclass(frozen=True)
class Reference:
    """What the variants are compared with: numpy-in / numpy-out extract and transfer."""

    extract: ExtractFn
    transfer: TransferFn
    name: str


def torch_reference(model: Any) -> Reference:
    """The PyTorch fp32 model as the gate's reference."""
    return Reference(*torch_fns(model), name="torch-fp32")


def _finite(figures: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe figures: NaN / inf become None (and so miss every bound)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in figures.items()}


def runnable(bundle: Bundle, variant: str) -> str | None:
    """None when the gate can run ``variant`` here; else why not (unknown, backend missing)."""
    from ssft_deploy.engines import BACKENDS

    if variant not in reg.VARIANTS:
        return f"not in the gate's registry (export/variants.py: {sorted(reg.VARIANTS)})"
    backend = reg.VARIANTS[variant].backend
    reason = BACKENDS[backend].unavailable_reason() if backend in BACKENDS else "unknown backend"
    if reason is None and hasattr(BACKENDS[backend], "supports"):  # e.g. bf16 without AVX512_BF16
        reason = BACKENDS[backend].supports(reg.run_as(variant))
    return None if reason is None else f"backend {backend!r} unavailable here: {reason}"


def _judge_variant(bundle: Bundle, variant: str, ref, reference: Reference, data: HeldOut):
    s = reg.spec(variant)
    try:
        extract, transfer = reg.engine_fns(bundle, variant)
        got = run_stages(extract, transfer, data, bundle.k, bundle.transfer_parts)
        row = compare(ref, got, transfer, data, s.precision)
    except GateError:
        raise
    except SSFTError as exc:  # the variant cannot even run (bad graph I/O, missing file...)
        return {"verdict": "fail", "failed": ["error"], "error": str(exc), "figures": {},
                "thresholds": asdict(thresholds(s.precision))}
    figures = {k: v for k, v in row.items() if k not in ("thresholds", "failed", "verdict")}
    return {"verdict": row["verdict"], "failed": row["failed"], "figures": _finite(figures),
            "thresholds": row["thresholds"]}


def gate_variants(bundle: Bundle, reference: Reference, data: HeldOut,
                  variants: Sequence[str] | None = None, tool: str = "ssft-export",
                  say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Gate records of ``variants`` (default: all of the bundle's) of an opened bundle.

    A variant that cannot run (an ``SSFTError`` from its engines) is recorded as failed. Anything
    else that stops the gate raises GateError and nothing is recorded.
    """
    names = list(variants) if variants is not None else list(bundle.variants)
    for v in names:
        if v not in bundle.variants:
            raise GateError(f"bundle {bundle.root} has no variant {v!r} (it has "
                            f"{sorted(bundle.variants)})")
        reason = runnable(bundle, v)
        if reason:
            raise GateError(f"cannot gate variant {v!r} here: {reason}")
    try:
        ref = run_stages(reference.extract, reference.transfer, data, bundle.k,
                         bundle.transfer_parts)
        r_ref = ranking(ref, data)
    except Exception as exc:
        raise GateError(f"the parity gate's reference ({reference.name}) failed on the held-out "
                        f"images: {exc}; nothing was recorded") from exc
    common = {"reference": {"name": reference.name, **_finite(r_ref)},
              "data": {"source": data.source, "queries": len(data.query),
                       "gallery": len(data.gallery), "trials": max(1, len(data.trials))},
              "model_sha256": model_digest(bundle.manifest.get("model")), "tool": tool}
    records = {}
    for v in names:
        say(f"parity gate: {v} ({reg.spec(v).backend}, {reg.spec(v).precision} thresholds)")
        try:
            judged = _judge_variant(bundle, v, ref, reference, data)
        except GateError:
            raise
        except Exception as exc:
            raise GateError(f"the parity gate stopped while checking variant {v!r}: {exc!r}; "
                            "nothing was recorded and no bundle was published") from exc
        records[v] = {**judged, "precision": reg.spec(v).precision,
                      "backend": reg.spec(v).backend, **common,
                      "files": {g: e.sha256 for g, e in bundle.variants[v].items()},
                      "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return records


def with_records(manifest: dict[str, Any], records: dict[str, dict]) -> dict[str, Any]:
    """A copy of ``manifest`` with ``records`` merged into its gate section."""
    out = dict(manifest)
    gate = dict(out.get(GATE_KEY) or {})
    gate["variants"] = {**(gate.get("variants") or {}), **records}
    out[GATE_KEY] = gate
    return out


def failures(records: dict[str, dict]) -> list[str]:
    return [v for v, r in records.items() if r["verdict"] != "pass"]


def finalize(bundle_dir: str | os.PathLike, manifest: dict[str, Any], reference: Reference,
             data: HeldOut, variants: Sequence[str] | None = None, tool: str = "ssft-export",
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage ``manifest``, gate its variants, record the verdicts, publish ``manifest.json``.

    Until the last rename only ``manifest.staging.json`` exists (never loaded), so an exception
    anywhere in the gate leaves no loadable bundle. Returns the published manifest.
    """
    write_manifest(bundle_dir, manifest, staging=True)
    bundle = open_for_gate(bundle_dir, manifest)
    records = gate_variants(bundle, reference, data, variants, tool, say)
    final = with_records(manifest, records)
    write_manifest(bundle_dir, final, staging=True)
    publish_manifest(bundle_dir)
    return final


def format_table(records: dict[str, dict]) -> str:
    """The gate's records as a fixed-width text table (figures, then the verdict)."""
    head = (f"{'variant':<10}{'ext cos':>11}{'T graph cos':>13}{'T cos':>9}{'nbr ovl':>9}"
            f"{'dR1':>7}{'dmAP':>7}  verdict")
    lines = []
    if records:
        any_rec = next(iter(records.values()))
        ref, data = any_rec["reference"], any_rec["data"]
        trials = data.get("trials", 1)
        lines.append(f"parity vs {ref['name']} on {data['queries']} IR queries x "
                     f"{data['gallery']} RGB gallery ({data['source']}"
                     f"{f'; mean of {trials} single-shot trials' if trials > 1 else ''}); "
                     f"reference Rank-1 {_fmt(ref['rank1'], '.1f')} mAP "
                     f"{_fmt(ref['mAP'], '.1f')} (points)")
    lines += [head, "-" * len(head)]
    for name, r in records.items():
        f = r["figures"]
        why = f" ({r['error']})" if r.get("error") else (
            f" (missed {', '.join(r['failed'])})" if r["failed"] else "")
        lines.append(f"{name:<10}{_fmt(f.get('extractor_min_cos'), '.7f'):>11}"
                     f"{_fmt(f.get('transfer_graph_min_cos'), '.7f'):>13}"
                     f"{_fmt(f.get('transferred_min_cos'), '.4f'):>9}"
                     f"{_fmt(f.get('neighbour_overlap_mean'), '.3f'):>9}"
                     f"{_fmt(f.get('d_rank1'), '+.1f'):>7}{_fmt(f.get('d_mAP'), '+.1f'):>7}"
                     f"  {r['verdict']} [{r['precision']}]{why}")
    return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
