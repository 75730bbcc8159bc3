"""The parity gate's verdicts as the manifest records them, and what makes one valid.

``manifest["gate"]["variants"][variant]`` is written by ``export.gate`` (see
docs/ARCHITECTURE.md, "Bundle"). A variant counts as gated when its record says ``"verdict":
"pass"``, its ``files`` (graph -> sha256) equal the variant's current manifest entries, and its
``model_sha256`` equals the digest of the current ``model`` section: a verdict is bound to exactly
what was measured. A recorded ``pass`` is not trusted either: its figures are re-judged against
this package's own threshold table (``ssft_deploy.thresholds``), so a record edited to "pass", or
stripped of its figures, does not open.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssft_deploy.thresholds import CHECKS, THRESHOLDS, missed, variant_precision

GATE_KEY = "gate"


def model_digest(model: Any) -> str:
    """sha256 of the manifest's ``model`` section (canonical JSON)."""
    text = json.dumps(model, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def gate_record(manifest: Mapping[str, Any], variant: str) -> dict | None:
    """The gate's record of ``variant``, if the manifest has a well-formed one."""
    gate = manifest.get(GATE_KEY)
    records = gate.get("variants") if isinstance(gate, dict) else None
    rec = records.get(variant) if isinstance(records, dict) else None
    return rec if isinstance(rec, dict) else None


def ungated_reason(manifest: Mapping[str, Any], variant: str,
                   files: Mapping[str, str]) -> str | None:
    """None when ``variant`` (whose files are graph -> sha256 ``files``) passed the gate; else why
    it does not count as gated."""
    rec = gate_record(manifest, variant)
    if rec is None:
        return "has not been through the parity gate"
    if rec.get("verdict") != "pass":
        failed = rec.get("failed") or []
        why = rec.get("error") or (f"missed {', '.join(map(str, failed))}" if failed
                                   else f"verdict {rec.get('verdict')!r}")
        return f"failed the parity gate ({why})"
    rejudged = _rejudge(variant, rec)
    if rejudged:
        return rejudged
    if rec.get("files") != dict(files):
        return "has changed since it passed the parity gate (its files' sha256 differ)"
    if rec.get("model_sha256") != model_digest(manifest.get("model")):
        return "has a manifest 'model' section changed since it passed the parity gate"
    return None


def _rejudge(variant: str, rec: Mapping[str, Any]) -> str | None:
    """Why a recorded ``pass`` does not hold under this package's thresholds (None: it holds)."""
    precision = rec.get("precision")
    implied = variant_precision(variant)
    if implied is not None and precision != implied:
        return (f"records a pass at precision {precision!r}, but it is an {implied!r} variant "
                "(a record that does not match its variant)")
    if not isinstance(precision, str) or precision not in THRESHOLDS:
        return (f"records a pass at precision {precision!r}, which this package has no "
                f"thresholds for (it has {sorted(THRESHOLDS)})")
    row = THRESHOLDS[precision]
    figures = rec.get("figures")
    failed = missed(figures, row)
    if not failed:
        return None
    figures = figures if isinstance(figures, dict) else {}
    why = []
    for name in failed:
        field, kind = CHECKS[name]
        bound = getattr(row, field)
        need = f">= {bound:g}" if kind == "min" else f"within +-{bound:g}"
        why.append(f"{name} {figures.get(name, 'missing')!r} (needs {need})")
    return (f"records a pass whose figures miss this package's {precision} thresholds: "
            + ", ".join(why))


def reverify_hint(root: Path, variant: str) -> str:
    """What the user can do about an ungated variant."""
    return (f"re-verify it with `ssft-verify {root} --checkpoint MODEL.pth --variants {variant}`,"
            " or open it anyway, at your own risk, with allow_ungated=True (CLIs: "
            "--allow-ungated)")
