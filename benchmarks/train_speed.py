"""Training steps per second on this machine: the demo before and after issue 23's changes.

Each variant (a config plus overrides) trains in its own process (``benchmarks/train_worker.py``)
on the same data; the variants run in interleaved rounds with the load recorded around every slice
(``benchmarks.workers``), so a busy machine slows them alike. A step includes fetching its batch
from the trainer's DataLoader. Prints and writes steps/s per variant and each variant's speed-up
over the first one, with the CPU model, its ISA flags and the load average.

    python benchmarks/train_speed.py --data runs/demo/data/sysu --out docs/results/train_speed.json
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from benchmarks.common import BenchError, format_table, header, write_json
from benchmarks.train_worker import NAN_FILL
from benchmarks.workers import start_workers

# Overrides of configs/demo.json. before: the demo as it was before issue 23 (ResNet-18 from
# scratch, 8 ids x (4 RGB + 4 IR), Adam's foreach kernel, torch's NaN-filling of every empty
# tensor under deterministic mode); then the MobileNetV2 demo recipe with each speed change added
# in turn. Every variant trains on 64 images a step. NAN_FILL is the worker's, not a config key.
OLD_DEMO = ["arch=resnet18", "pretrained=null", "ids_per_batch=8", "rgb_per_id=4", "ir_per_id=4"]
VARIANTS = {
    "before: old demo (resnet18, foreach Adam, NaN fill)": [*OLD_DEMO, "fused_optimizer=false",
                                                            NAN_FILL],
    "demo recipe (mobilenet_v2), foreach Adam, NaN fill": ["fused_optimizer=false", NAN_FILL],
    "demo recipe, fused Adam, NaN fill": [NAN_FILL],
    "after: demo recipe, fused Adam, no NaN fill": [],
    "after + channels_last": ["channels_last=true"],
}
RECIPE_BEFORE = "demo recipe (mobilenet_v2), foreach Adam, NaN fill"


def run(config: str, data: str, rounds: int, budget_s: float, threads: int | None,
        extra: list[str], variants: dict[str, list[str]] | None = None) -> dict:
    """Steps/s of each variant (name -> overrides; default ``VARIANTS``), interleaved."""
    from benchmarks.workers import interleaved_rounds

    variants = variants or VARIANTS
    specs = {name: {"config": config, "data": data, "overrides": ov + extra, "threads": threads}
             for name, ov in variants.items()}
    workers, skipped = start_workers(specs, threads, module="benchmarks.train_worker")
    if not workers:
        raise BenchError("no variant could start: " + "; ".join(
            f"{s['name']}: {s['reason']}" for s in skipped))
    try:
        slices, records = interleaved_rounds(workers, batch=0, rounds=rounds, warmup=3,
                                             budget_s=budget_s)
    finally:
        for w in workers.values():
            w.close()
    result = {**header("train_speed"), "config": config, "data": data, "extra": extra,
              "rounds": records, "skipped": skipped, "variants": {}}
    base, recipe = None, None
    for name, sl in slices.items():
        steps = [s for x in sl for s in x["samples"]]
        clean = [s for x in sl if not x["under_load"] for s in x["samples"]]
        sps = len(steps) / sum(steps)
        base = base or sps
        result["variants"][name] = {
            "overrides": variants[name], "steps": len(steps), "steps_per_s": round(sps, 3),
            "median_step_s": round(float(np.median(steps)), 4),
            "steps_per_s_clean_rounds": round(len(clean) / sum(clean), 3) if clean else None,
            "speedup": round(sps / base, 2)}
        if name == RECIPE_BEFORE:
            recipe = sps
        if recipe:   # the same model's speed-up from the speed changes alone
            result["variants"][name]["speedup_vs_recipe_before"] = round(sps / recipe, 2)
    return result


@click.command()
@click.option("--config", default="configs/demo.json", show_default=True)
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="docs/results/train_speed.json", show_default=True,
              type=click.Path())
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1))
@click.option("--budget-s", default=10.0, show_default=True, help="seconds per slice")
@click.option("--threads", default=None, type=int, help="torch threads per worker")
@click.option("--set", "extra", multiple=True, help="override for every variant")
@click.option("--variant", "names", multiple=True, type=click.Choice(list(VARIANTS)),
              help="run only these variants (repeatable; default all)")
def main(config, data, out, rounds, budget_s, threads, extra, names) -> None:
    """Steps/s of the training variants, side by side in one run."""
    chosen = {n: VARIANTS[n] for n in (names or VARIANTS)}
    res = run(config, data, rounds, budget_s, threads, list(extra), chosen)
    m = res["machine"]
    click.echo(f"{m['cpu']} ({', '.join(m['isa'])}), load {m['load_avg_1m']}")
    rows = [[n, v["steps"], v["steps_per_s"], v["median_step_s"], v["speedup"]]
            for n, v in res["variants"].items()]
    click.echo(format_table(["variant", "steps", "steps/s", "median s/step", "speed-up"], rows))
    for s in res["skipped"]:
        click.echo(f"skipped {s['name']}: {s['reason']}")
    write_json(Path(out), res)
    click.echo(f"results: {out}")


if __name__ == "__main__":
    main()
