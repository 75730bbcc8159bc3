"""The runtime imports without torch, in a fresh interpreter (the dependency boundary)."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = ["ssft_deploy", "ssft_deploy.runtime", "ssft_deploy.engines", "ssft_deploy.bundle",
           "ssft_deploy.preprocess", "ssft_deploy.engines.tensorrt"]


@pytest.mark.parametrize("module", MODULES)
def test_import_leaves_torch_out(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "bad = sorted(m for m in ('torch', 'tensorrt', 'pycuda', 'onnx') if m in sys.modules); "
            "print(','.join(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"{module} imported {res.stdout.strip()}"
