"""A local Milvus standalone server for tests, benchmarks and trying the server store on one
machine: the PyPI package ``milvus`` (the embedded build of Milvus standalone, with its own etcd
and local storage) in a virtualenv of its own (``.venv-milvus``: ``make milvus-setup``, or
``$SSFT_MILVUS_PYTHON``), started as a subprocess in a private folder, listening on 127.0.0.1
only, on a free port.

The server runs in its own session (process group): ``stop`` ends all of it (the launcher, the
``milvus`` binary and whatever it spawned) and removes the folder unless it was given.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ssft_deploy.errors import GalleryError

if TYPE_CHECKING:
    from typing_extensions import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO_ROOT / ".venv-milvus" / "bin" / "python"
START_TIMEOUT_S = 180.0

# Runs in the server's interpreter (only the ``milvus`` package there). The package's template
# gains ``etcd.config.path``: the embedded etcd then listens on loopback ports chosen by the parent
# (by default it takes 2379 / 2380 on every interface, so a second server on the machine fails).
# Every component advertises loopback; the gRPC servers of Milvus 2.3 have no listen address
# setting and bind all interfaces on their (free) ports.
_CHILD = r"""
import os, signal, sys, threading
import milvus
from milvus import MilvusServer, MilvusServerConfig
base, port, etcd, peer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = os.path.join(os.path.dirname(milvus.__file__), "data")
with open(os.path.join(data, "config.yaml.template")) as f:
    text = f.read().replace("etcd:\n", "etcd:\n  config:\n    path: {{ etcd_config_path }}\n", 1)
template = os.path.join(base, "milvus.yaml.template")
with open(template, "w") as f:
    f.write(text)
etcd_yaml = os.path.join(base, "etcd.yaml")
with open(etcd_yaml, "w") as f:
    f.write(f"name: default\nlisten-client-urls: http://127.0.0.1:{etcd}\n"
            f"advertise-client-urls: http://127.0.0.1:{etcd}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n")
cfg = MilvusServerConfig(template=template)
cfg.glog_conf_file = os.path.join(data, "glog.conf")
srv = MilvusServer(cfg, proxy_port=port, etcd_port=etcd)
srv.set_base_dir(base)
srv.config.set("etcd_config_path", etcd_yaml)
for comp in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord",
             "dataNode"):
    srv.config.set(comp + ".ip", "127.0.0.1")
for key, value in (a.split("=", 1) for a in sys.argv[5:]):
    srv.config.set(key, value)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
srv.start()
print("ready", srv.listen_port, flush=True)
while not done.wait(0.5) and srv.server_proc.poll() is None:
    pass
srv.stop()
"""


def milvus_python() -> Path:
    """The interpreter of the server's environment ($SSFT_MILVUS_PYTHON or .venv-milvus)."""
    return Path(os.environ.get("SSFT_MILVUS_PYTHON", DEFAULT_PYTHON))


def unavailable_reason(python: Path | None = None) -> str | None:
    """``None`` when ``python`` can import the ``milvus`` server package, else why not."""
    python = python or milvus_python()
    if not python.exists():
        return f"{python} does not exist (create it: make milvus-setup)"
    res = subprocess.run([str(python), "-c", "import milvus"], capture_output=True, text=True,
                         timeout=120, check=False)
    if res.returncode:
        return f"{python} cannot import milvus: {(res.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class MilvusServerProcess:
    """``with MilvusServerProcess() as srv: open_gallery(srv.uri, ...)``."""

    def __init__(self, base_dir: str | os.PathLike | None = None, port: int | None = None,
                 python: Path | None = None, extra: dict[str, str] | None = None) -> None:
        self.python = python or milvus_python()
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="ssft-milvus-"))
        self.port, self._etcd, self._peer = free_ports(3)
        self.port = port or self.port
        self.extra = extra or {}
        self.proc: subprocess.Popen | None = None
        self.started_s: float | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        reason = unavailable_reason(self.python)
        if reason:
            raise GalleryError(f"cannot start a Milvus server: {reason}")
        t0 = time.monotonic()
        log = open(self.base_dir / "launcher.log", "w")  # noqa: SIM115 (the child's lifetime)
        self.proc = subprocess.Popen(
            [str(self.python), "-c", _CHILD, str(self.base_dir), str(self.port), str(self._etcd),
             str(self._peer),
             *(f"{k}={v}" for k, v in self.extra.items())],
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        log.close()
        line = self._ready_line(t0)
        if not line.startswith("ready"):
            tail = self.log_tail()
            self.stop()
            raise GalleryError(f"the Milvus server did not start ({line!r}): {tail}")
        self.port = int(line.split()[1])
        self.started_s = time.monotonic() - t0
        return self

    def _ready_line(self, t0: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        while time.monotonic() - t0 < START_TIMEOUT_S:
            if sel.select(timeout=1.0):
                return self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}"
        return f"no answer in {START_TIMEOUT_S:.0f} s"

    def log_tail(self, n: int = 2000) -> str:
        parts = []
        for p in (self.base_dir / "launcher.log", self.base_dir / "logs" / "milvus-stderr.log"):
            if p.exists():
                parts.append(p.read_text(errors="replace")[-n:])
        return " | ".join(parts)

    def pids(self) -> list[int]:
        """Processes of the server's session (launcher, milvus, anything they spawned)."""
        if self.proc is None:
            return []
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if os.getsid(int(d.name)) == self.proc.pid:
                        out.append(int(d.name))
                except OSError:
                    continue
        return out

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the whole server session (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.proc is not None:
            pgid = self.proc.pid
            if self.proc.poll() is None:
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + timeout_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.pids():
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
