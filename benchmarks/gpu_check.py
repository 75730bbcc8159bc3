"""`make gpu-check`: every GPU test and GPU benchmark that can run on this machine, one JSON.

    python3 benchmarks/gpu_check.py [--out runs/gpu-check] [--wheels .whl] [--budget 540]

Made for a bare GPU machine with no network (Python 3.12, numpy / torch / CuPy / onnxruntime
preinstalled at best): it installs whatever wheels (or sdists) lie in ``--wheels`` into a private
folder, tolerating each one that fails, then runs steps, each in its own process under a time
limit drawn from ``--budget`` (whole run; default 9 minutes), so one hung or crashing step costs
only itself:

- ``probe``: GPU name (nvidia-smi), machine, what is importable (onnxruntime providers, CuPy,
  pycuda, TensorRT, NVRTC);
- ``affinity``: the CUDA top-k kernel against ``dense`` at the protocols' sizes (identical
  neighbours required; time ratio, side by side in one run);
- ``tests``: ``pytest -m gpu`` over the whole suite, plus the CPU-side tests of the GPU code;
- ``engines``: a random-weight ResNet-50 model at 288x144 exported (fp32, + fp16 / TensorRT where
  possible) and timed by ``benchmarks/latency.py --quick`` on ORT CPU / ORT CUDA / TensorRT.

Writes ``gpu_check.json`` (``gpu`` names the GPU; each step has ``status`` pass / fail / skip /
error, its seconds and reason) plus each step's own files under ``--out``. Exit 0 unless a step
failed (a skip is not a failure: its reason is in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("probe", "affinity", "tests", "engines")
CAPS = {"probe": 60, "affinity": 120, "tests": 300, "engines": 300}  # seconds, at most
AFFINITY_N = (3803 + 301, 3803 + 3010, 20000)  # SYSU single-shot, multi-shot; a large gallery
DIMS = 2048  # shared / specific feature width of the ResNet-50 model


def install_wheels(wheels: Path, site: Path) -> list[dict]:
    """pip-install every wheel / sdist of ``wheels`` into ``site`` (no index, no deps), one at a
    time so one bad file costs only itself."""
    files = sorted([*wheels.glob("*.whl"), *wheels.glob("*.tar.gz")]) if wheels.is_dir() else []
    done = []
    for f in files:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--no-build-isolation", "--upgrade",
               "--target", str(site), str(f)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            ok, msg = res.returncode == 0, res.stderr.strip()[-300:]
        except subprocess.TimeoutExpired:
            ok, msg = False, "timed out after 120 s"
        done.append({"file": f.name, "installed": ok, **({} if ok else {"error": msg})})
    return done


def junit_results(path: Path) -> list[dict]:
    """One row per test case of a pytest junit XML: test, outcome, seconds, message."""
    if not path.is_file():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "")[:400]
                break
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": float(case.get("time") or 0), "message": message})
    return rows


# -- steps (each runs in its own process: ``--worker STEP``) --------------------------------------

def step_probe(out: Path) -> dict:
    from benchmarks.common import machine_info

    info = {"machine": machine_info(), "importable": {}}
    for mod in ("numpy", "onnx", "onnxruntime", "cupy", "pycuda.driver", "tensorrt",
                "cuda.bindings.nvrtc", "torch", "onnxconverter_common", "onnxslim", "faiss"):
        try:
            m = __import__(mod, fromlist=["_"])
            info["importable"][mod] = str(getattr(m, "__version__", "yes"))
        except Exception as exc:  # noqa: BLE001
            info["importable"][mod] = f"no ({type(exc).__name__}: {str(exc)[:120]})"
    from ssft_deploy.affinity import cuda
    from ssft_deploy.engines import backend_status

    info["backends"] = backend_status()
    info["cuda_affinity_available"] = cuda.available()
    gpus = info["machine"]["gpus"]
    return {"status": "pass" if gpus else "skip", "gpu": gpus[0] if gpus else None,
            "reason": None if gpus else "nvidia-smi lists no GPU", **info}


def step_affinity(out: Path, limit: float) -> dict:
    import logging

    import numpy as np

    from ssft_deploy.affinity import cuda, topk_affinity

    if not cuda.available():
        return {"status": "skip", "reason": "no GPU usable through CuPy or pycuda"}
    fell_back = []
    handler = logging.Handler()
    handler.emit = lambda record: fell_back.append(record.getMessage())
    logging.getLogger("ssft_deploy.affinity").addHandler(handler)
    rows, ok, t_start = [], True, time.perf_counter()
    for n in AFFINITY_N:
        if rows and time.perf_counter() - t_start > limit / 3:  # the next size would not fit
            rows.append({"n": n, "skipped": "time budget"})
            continue
        rng = np.random.default_rng(n)
        shared, specific = (rng.standard_normal((n, DIMS), dtype=np.float32) for _ in range(2))
        modality = (np.arange(n) >= n // 2).astype(np.int64)
        times = {}
        for method in ("cuda", "dense", "cuda", "dense"):  # first pair warms up (compile, BLAS)
            t0 = time.perf_counter()
            res = topk_affinity(shared, specific, modality, k=4, method=method)
            times[method] = time.perf_counter() - t0
            if method == "cuda":
                got = res
            else:
                want = res
        same = bool(np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1], atol=1e-6))
        ok &= same and not fell_back
        rows.append({"n": n, "dims": DIMS, "dense_s": round(times["dense"], 4),
                     "cuda_s": round(times["cuda"], 4),
                     "dense_over_cuda": round(times["dense"] / times["cuda"], 2),
                     "identical_neighbours": same})
    return {"status": "pass" if ok else "fail", "rows": rows, "fallbacks": fell_back,
            "load_avg_1m": os.getloadavg()[0],
            "reason": None if ok else "cuda differs from dense or fell back (see rows/fallbacks)"}


def step_tests(out: Path, limit: float) -> dict:
    runs = {"gpu_marked": ["-m", "gpu", "tests"],
            "gpu_code_on_cpu": ["-m", "not gpu", "tests/test_affinity_cuda.py",
                                "tests/test_engines.py", "tests/test_engines_trt_fake.py",
                                "tests/test_engines_limits.py", "tests/test_transfer_limits.py"]}
    result, ok = {}, True
    for name, args in runs.items():
        xml = out / f"tests_{name}.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={xml}", *args]
        try:
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                 timeout=max(10, limit / len(runs)), check=False)
            tail, code = res.stdout[-3000:], res.returncode
        except subprocess.TimeoutExpired as exc:
            tail, code = f"timed out: {(exc.stdout or b'')[-2000:]!r}", "timeout"
        cases = junit_results(xml)
        failed = [c for c in cases if c["outcome"] in ("failed", "error")]
        ok &= code in (0, 5) and not failed  # 5: nothing selected
        result[name] = {"exit": code, "cases": cases, "tail": tail,
                        "counts": {o: sum(c["outcome"] == o for c in cases)
                                   for o in ("passed", "failed", "error", "skipped")}}
    return {"status": "pass" if ok else "fail", **result}


def step_engines(out: Path, limit: float) -> dict:
    import importlib.util

    from ssft_deploy.engines import backend_status

    status = backend_status()
    if status["ort-cuda"] and status["tensorrt"]:
        return {"status": "skip", "reason": f"ort-cuda: {status['ort-cuda']}; "
                                            f"tensorrt: {status['tensorrt']}"}
    import torch

    from train.config import SSFTConfig
    from train.model import SSFTModel, save_checkpoint

    torch.manual_seed(0)
    cfg = SSFTConfig(arch="resnet50", height=288, width=144, num_classes=395, pretrained=None)
    ckpt = out / "model.pth"
    save_checkpoint(SSFTModel(cfg, load_pretrained=False).eval(), ckpt)
    bundle = out / "bundle"
    flags = ["--no-verify"]
    if importlib.util.find_spec("onnxconverter_common"):
        flags.append("--fp16")
    if status["tensorrt"] is None:
        flags.append("--trt")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "export.cli", str(ckpt), "--out", str(bundle),
                          *flags], cwd=ROOT, capture_output=True, text=True,
                         timeout=limit / 2, check=False)
    export_s = time.perf_counter() - t0
    if res.returncode != 0:
        return {"status": "error", "reason": "export failed", "flags": flags,
                "tail": (res.stdout + res.stderr)[-3000:]}
    backends = "ort-cpu/fp32,ort-cuda/fp32,ort-cuda/fp16,tensorrt/fp16"
    bench = out / "latency"
    res = subprocess.run([sys.executable, "benchmarks/latency.py", "--bundle", str(bundle),
                          "--checkpoint", str(out / "none.pth"), "--quick", "--backends",
                          backends, "--out", str(bench)], cwd=ROOT, capture_output=True,
                         text=True, timeout=max(10, limit - export_s - 30), check=False)
    latency = bench / "latency.json"
    return {"status": "pass" if res.returncode == 0 and latency.is_file() else "fail",
            "export_flags": flags, "export_s": round(export_s, 1),
            "latency": json.loads(latency.read_text()) if latency.is_file() else None,
            "tail": (res.stdout + res.stderr)[-3000:]}


def worker(step: str, out: Path, limit: float) -> None:
    if step == "probe":
        result = step_probe(out)
    else:
        fn = {"affinity": step_affinity, "tests": step_tests, "engines": step_engines}[step]
        result = fn(out, limit)
    (out / f"{step}.json").write_text(json.dumps(result, indent=2, default=str))


# -- the orchestrator -----------------------------------------------------------------------------

def run_step(step: str, out: Path, env: dict, limit: float) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", step, "--out", str(out),
           "--budget", str(limit)]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=limit, check=False)
        tail, code = (res.stdout + res.stderr)[-3000:], res.returncode
    except subprocess.TimeoutExpired:
        tail, code = "", "timeout"
    seconds = round(time.perf_counter() - t0, 1)
    path = out / f"{step}.json"
    if code == 0 and path.is_file():
        return {"seconds": seconds, **json.loads(path.read_text())}
    return {"status": "error", "seconds": seconds,
            "reason": f"step ended with {code} after {seconds} s", "tail": tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.worker, out, args.budget)
        return 0
    start = time.perf_counter()
    site = out / "site"
    report = {"gpu": None, "python": sys.version.split()[0], "budget_s": args.budget,
              "install": install_wheels(args.wheels, site), "steps": {}}
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    for step in [s for s in args.steps.split(",") if s]:
        left = args.budget - (time.perf_counter() - start) - 5
        if step not in STEPS or left < 15:
            report["steps"][step] = {"status": "skip", "reason": "unknown step" if step not in
                                     STEPS else f"budget spent ({left:.0f} s left)"}
            continue
        report["steps"][step] = result = run_step(step, out, env, min(CAPS[step], left))
        if step == "probe":
            report["gpu"] = result.get("gpu")
        print(f"[gpu-check] {step}: {result['status']} ({result['seconds']} s) "
              f"{result.get('reason') or ''}", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"[gpu-check] GPU: {report['gpu']}; wrote {out / 'gpu_check.json'}")
    return int(any(s["status"] in ("fail", "error") for s in report["steps"].values()))


if __name__ == "__main__":
    sys.exit(main())
