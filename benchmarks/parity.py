"""Parity of every exported variant with the PyTorch fp32 model, across backends and precisions.

    python benchmarks/parity.py [--bundle runs/demo/bundle] [--checkpoint runs/demo/model.pth]
                                [--data runs/demo/data/sysu] [--trials 10] [--quick]
                                [--out runs/bench]

Two parts. The export's parity gate (``export.parity``: extractor features, neighbour overlap,
transfer graph, transferred features, ranking on a held-out trial) run for each backend and
precision that can run here, not only the ONNX Runtime CPU one the export checks. Then Rank-1 / mAP
under the SYSU-MM01 protocol on the dataset (synthetic by default) for torch fp32 and each variant
through ``ssft_deploy.evaluation``, with dRank-1 / dmAP in points against torch fp32.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

if __package__ in (None, ""):  # run as `python benchmarks/parity.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.backends import ENGINE_VARIANTS
from benchmarks.common import BenchError, check_target, format_table, header, write_json

SETTINGS = ("transfer", "shared-only")


def engine_fns(bundle, backend: str, precision: str):
    """extract / transfer of one (backend, precision); the transfer graph falls back to fp32 on
    the same backend, then ORT CPU, when the variant has none (as ``ReIDRuntime`` does)."""
    from export.variants import engine_pair
    from ssft_deploy.bundle import EXTRACTORS
    from ssft_deploy.engines import open_engine
    from ssft_deploy.errors import SSFTError

    engines = {g: open_engine(bundle, g, precision, backend) for g in EXTRACTORS}
    tried = [(backend, precision), (backend, "fp32"), ("ort-cpu", "fp32")]
    for b, p in tried:
        try:
            engines["transfer"] = open_engine(bundle, "transfer", p, b)
            break
        except SSFTError:
            continue
    else:
        raise BenchError(f"no transfer graph can run for {backend}/{precision}")
    return (*engine_pair(engines), f"{b}/{p}")


def gate_rows(model, info, data_root: Path, variants) -> tuple[dict, list[dict]]:
    """export.parity's stage comparison for each (backend, precision) that opens here."""
    from export.images import held_out_images
    from export.parity import compare, ranking, run_stages, torch_fns
    from ssft_deploy.errors import SSFTError
    from ssft_deploy.preprocess import Preprocessor

    held = held_out_images(Preprocessor.from_bundle(info), root=data_root)
    ref = run_stages(*torch_fns(model), held, info.k, info.transfer_parts)
    gate = {"data": held.source, "queries": len(held.query), "gallery": len(held.gallery),
            "reference": {"name": "torch/fp32", **ranking(ref, held)}, "variants": {}}
    skipped = []
    for backend, precision in variants:
        name = f"{backend}/{precision}"
        try:
            extract, transfer, tr_name = engine_fns(info, backend, precision)
        except (SSFTError, ImportError) as exc:
            skipped.append({"name": name, "reason": str(exc)})
            continue
        got = run_stages(extract, transfer, held, info.k, info.transfer_parts)
        row = compare(ref, got, transfer, held, precision)
        gate["variants"][name] = {"backend": backend, "precision": precision,
                                  "transfer_graph": tr_name, **row}
    return gate, skipped


def accuracy(reference, info, data_root: Path, names: list[str], trials: int, settings) -> dict:
    """SYSU protocol Rank-1 / mAP per variant and setting, with deltas against ``reference`` (the
    torch fp32 ``FeatureSource``, ``train.evaluate.TorchFeatureSource``)."""
    from ssft_deploy.evaluation import evaluate_sysu
    from ssft_deploy.runtime import ReIDRuntime

    def metrics(source) -> dict:
        res = evaluate_sysu(source, data_root, mode="all", shots=1, trials=trials,
                            settings=settings, affinity="dense", progress=False)
        return {s: {"rank1": r["rank1"]["mean"], "mAP": r["mAP"]["mean"]}
                for s, r in res["settings"].items()}

    ref = metrics(reference)
    out = {"protocol": f"SYSU-MM01 all-search single-shot, {trials} trial(s)", "units": "percent",
           "reference": {"name": "torch/fp32", **ref}, "variants": {}}
    for name in names:
        backend, precision = name.split("/")
        with ReIDRuntime.open(info, precision=precision, backend=backend,
                              affinity="dense") as rt:
            got = metrics(rt.as_feature_source(progress=False))
        out["variants"][name] = {
            s: {**got[s], "d_rank1": got[s]["rank1"] - ref[s]["rank1"],
                "d_mAP": got[s]["mAP"] - ref[s]["mAP"]} for s in got}
    return out


def _dataset(data: str | None, input_size, tmp: Path) -> tuple[Path, str]:
    if data:
        if not Path(data).is_dir():
            raise BenchError(f"no dataset at {data} (a SYSU-MM01 layout folder; `make demo` "
                             "writes runs/demo/data/sysu)")
        return Path(data), str(data)
    from ssft_deploy.datasets import synthetic

    root = tmp / "sysu"
    synthetic.generate_sysu(root, num_train=1, num_val=0, num_test=16, size=tuple(input_size),
                            seed=0)
    return root, "synthetic (generated for this run: 16 test ids)"


@click.command()
@click.option("--bundle", default="runs/demo/bundle", show_default=True, type=click.Path())
@click.option("--checkpoint", default="runs/demo/model.pth", show_default=True,
              type=click.Path(), help="The torch fp32 reference.")
@click.option("--data", default=None, type=click.Path(),
              help="SYSU-style dataset [default: runs/demo/data/sysu if present, else a small "
                   "synthetic one generated into a temporary folder].")
@click.option("--trials", default=10, show_default=True, help="SYSU protocol trials.")
@click.option("--backends", default=None, help="Only these, e.g. 'ort-cpu,tensorrt/fp16'.")
@click.option("--quick", is_flag=True, help="One trial, transfer setting only.")
@click.option("--out", "out_dir", default="runs/bench", show_default=True, type=click.Path())
def main(bundle: str, checkpoint: str, data: str | None, trials: int, backends: str | None,
         quick: bool, out_dir: str) -> None:
    """Parity gate and Rank-1 / mAP of every variant against torch fp32."""
    from benchmarks.common import require_bundle
    from ssft_deploy.bundle import load_bundle
    from ssft_deploy.errors import SSFTError

    require_bundle(Path(bundle))
    if not Path(checkpoint).is_file():
        raise BenchError(f"no checkpoint at {checkpoint}: parity needs the torch fp32 model "
                         "(--checkpoint; `make demo` writes runs/demo/model.pth)")
    if data is None and Path("runs/demo/data/sysu").is_dir():
        data = "runs/demo/data/sysu"
    trials, settings = (1, SETTINGS[:1]) if quick else (trials, SETTINGS)
    only = {b.strip() for b in backends.split(",")} if backends else None
    variants = [(b, p) for b, p in ENGINE_VARIANTS
                if only is None or b in only or f"{b}/{p}" in only]
    try:
        from train.evaluate import TorchFeatureSource

        info = load_bundle(bundle, verify=True)
        torch_source = TorchFeatureSource(checkpoint, progress=False)
        with tempfile.TemporaryDirectory(prefix="ssft-parity-") as tmp:
            root, source = _dataset(data, info.input_size, Path(tmp))
            click.echo(f"parity gate on {root}")
            gate, skipped = gate_rows(torch_source.model, info, root, variants)
            click.echo(f"accuracy ({trials} trial(s)) of torch/fp32 and {list(gate['variants'])}")
            acc = accuracy(torch_source, info, root, list(gate["variants"]), trials,
                           settings)
    except SSFTError as exc:
        raise BenchError(str(exc)) from None

    head = settings[0]
    rows = [[name, 1.0 - g["extractor_min_cos"], 1.0 - g["transfer_graph_min_cos"],
             g["neighbour_overlap_mean"], g["verdict"], acc["variants"][name][head]["rank1"],
             acc["variants"][name][head]["mAP"], acc["variants"][name][head]["d_rank1"],
             acc["variants"][name][head]["d_mAP"]] for name, g in gate["variants"].items()]
    ref = acc["reference"][head]
    click.echo(f"\nreference torch/fp32 ({head}): Rank-1 {ref['rank1']:.2f} mAP {ref['mAP']:.2f}"
               f" ({acc['protocol']}, {source})")
    click.echo(format_table(["variant", "ext 1-cos", "T graph 1-cos", "nbr overlap", "gate",
                             "Rank-1", "mAP", "dRank-1", "dmAP"], rows))
    for s in skipped:
        click.echo(f"skipped {s['name']}: {s['reason']}")
    int8 = acc["variants"].get("ort-cpu/int8", {}).get(head)
    worst = max(abs(int8["d_rank1"]), abs(int8["d_mAP"])) if int8 else None
    tgt = {"int8_accuracy": check_target("ORT CPU int8 max(|dRank-1|, |dmAP|) vs torch fp32, "
                                         "points", worst, 1.0, higher_is_better=False,
                                         unit="points")}
    t = tgt["int8_accuracy"]
    value = "-" if t["value"] is None else f"{t['value']:.2f}"
    click.echo(f"target: {t['target']}: {value} (goal <= 1.0) {t['note']}")

    result = {**header("parity"),
              "config": {"bundle": bundle, "checkpoint": checkpoint, "data": source,
                         "trials": trials, "settings": list(settings), "quick": quick},
              "gate": gate, "accuracy": acc, "skipped": skipped, "targets": tgt,
              "summary": {name: {"gate": g["verdict"],
                                 "rank1": acc["variants"][name][head]["rank1"],
                                 "mAP": acc["variants"][name][head]["mAP"],
                                 "d_rank1": acc["variants"][name][head]["d_rank1"],
                                 "d_mAP": acc["variants"][name][head]["d_mAP"]}
                          for name, g in gate["variants"].items()}}
    path = write_json(Path(out_dir) / "parity.json", result)
    click.echo(f"\nwrote {path}")


if __name__ == "__main__":
    main()
