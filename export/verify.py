"""``ssft-verify BUNDLE --checkpoint model.pth [--data DIR] [--variants ...]``: re-run the parity
gate on an existing bundle and write the verdicts into its manifest (atomically, durably).

Exit 0 when every variant checked passed, 2 when one failed or the gate could not run. The CLI
mirrors :func:`verify_bundle`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from export.errors import GateError
from export.gate import Reference, failures, format_table, gate_variants, runnable, with_records
from export.images import GATE_IMAGES
from ssft_deploy.bundle import open_for_gate, write_manifest
from ssft_deploy.errors import SSFTError
from ssft_deploy.preprocess import Preprocessor


def checkpoint_reference(checkpoint: str | os.PathLike, bundle) -> Reference:
    """The torch fp32 model of ``checkpoint``; GateError if it is not the bundle's model."""
    from export.gate import torch_reference
    from export.manifest import model_section
    from train.model import load_model

    model = load_model(checkpoint)
    mine, theirs = model_section(model), bundle.manifest.get("model") or {}
    differ = sorted(k for k in mine if k != "arch" and mine[k] != theirs.get(k))
    if differ:
        raise GateError(f"{checkpoint} is not the model bundle {bundle.root} was exported from "
                        f"(differs in {', '.join(differ)}); pass the checkpoint it came from")
    return torch_reference(model)


def verify_bundle(bundle_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
                  reference: Reference | None = None, data: str | os.PathLike | None = None,
                  held_out=None, variants: Sequence[str] | None = None,
                  gate_images: int = GATE_IMAGES,
                  say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Re-run the gate on ``variants`` (default: every variant that can run here) against the
    model of ``checkpoint`` (or ``reference``) on ``data``'s test split (default: synthetic) or
    ``held_out`` images; write the verdicts into the manifest; return the records."""
    from export.images import held_out_images

    bundle = open_for_gate(bundle_dir)
    if variants is None:
        variants = []
        for v in bundle.variants:
            reason = runnable(bundle, v)
            if reason:
                say(f"not checked: {v} ({reason}); its earlier verdict is kept")
            else:
                variants.append(v)
    if reference is None:
        if checkpoint is None:
            raise GateError("the gate needs a reference: pass --checkpoint MODEL.pth")
        reference = checkpoint_reference(checkpoint, bundle)
    if held_out is None:
        held_out = held_out_images(Preprocessor.from_bundle(bundle), data, gate_images,
                                   gate_images)
    records = gate_variants(bundle, reference, held_out, variants, tool="ssft-verify", say=say)
    write_manifest(bundle.root, with_records(bundle.manifest, records))
    return records


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="The model.pth the bundle was exported from (the fp32 reference).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="SYSU-style dataset whose test split feeds the gate [default: synthetic].")
@click.option("--variants", default=None,
              help="Comma-separated variants [default: every one that can run here].")
@click.option("--gate-images", type=click.IntRange(8, 100000), default=GATE_IMAGES,
              show_default=True,
              help="Most IR queries (and RGB gallery entries) of the held-out trial.")
def main(bundle: str, checkpoint: str, data: str | None, variants: str | None,
         gate_images: int) -> None:
    """Re-run the parity gate on BUNDLE; record the verdicts; exit 0 pass, 2 fail."""
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    try:
        records = verify_bundle(bundle, checkpoint, data=data, variants=names,
                                gate_images=gate_images,
                                say=lambda m: click.echo(f"[ssft-verify] {m}"))
    except SSFTError as exc:
        click.echo(f"ssft-verify: error: {exc}", err=True)
        sys.exit(2)
    click.echo(format_table(records))
    bad = failures(records)
    if not records:
        click.echo("ssft-verify: error: no variant of this bundle can be checked here", err=True)
        sys.exit(2)
    if bad:
        click.echo(f"ssft-verify: FAIL: {', '.join(bad)} (recorded; load_bundle refuses them)",
                   err=True)
        sys.exit(2)
    click.echo(f"ssft-verify: pass: {', '.join(records)}")


if __name__ == "__main__":
    main()
