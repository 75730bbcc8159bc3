"""Shared pytest fixtures. Keep the suite fast: 2 CPU cores, no GPU."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
