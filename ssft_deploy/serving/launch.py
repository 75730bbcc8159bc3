"""Start the PyTriton server as a subprocess of its own environment, wait until ready, stop it.

The server's interpreter (``.venv-triton/bin/python`` by default, or ``$SSFT_TRITON_PYTHON``) is
asked for its lib dir, which goes first on ``LD_LIBRARY_PATH`` so Triton's Python backend finds
the matching libpython; ``PYTHONPATH`` gets this checkout so the server imports this
``ssft_deploy`` without installing it there.

The server runs in its own session: ``stop`` (also on SIGTERM / SIGINT / SIGHUP of ``ssft-serve``,
whatever signal state it inherited: ``lifecycle``) ends all of it (tritonserver, its Python
backend stubs), removes the shared memory they leave in /dev/shm (also when one of them was
killed) and the private folder holding the admin token (mode 0600, see ``security``). With
``stop_with_parent`` (``ssft-serve`` sets it) the kernel sends the server SIGTERM when the thread
that started it dies (``PR_SET_PDEATHSIG``), so even a killed launcher leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ssft_deploy.errors import EngineError, SSFTError
from ssft_deploy.serving.lifecycle import STOP_SIGNALS, RunFiles, take_stop_signals
from ssft_deploy.serving.security import (
    PARENT_ENV,
    TOKEN_FILE_ENV,
    TOKEN_HEADER,
    check_host,
    check_ports_free,
    read_token_file,
    write_token_file,
)

if TYPE_CHECKING:
    from typing_extensions import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"
MODELS = ("ssft_extract_rgb", "ssft_extract_ir")
RECORD_EVERY_S = 5.0  # how often a waiting launcher records the server's temporary files
log = logging.getLogger("ssft_deploy.serving")


def triton_python() -> Path:
    """The interpreter of the PyTriton environment ($SSFT_TRITON_PYTHON or .venv-triton)."""
    return Path(os.environ.get("SSFT_TRITON_PYTHON", DEFAULT_PYTHON))


def unavailable_reason(python: Path | None = None) -> str | None:
    """``None`` when ``python`` can import pytriton, else why not (for skips and errors)."""
    python = python or triton_python()
    if not python.exists():
        return f"{python} does not exist (create it: make triton-setup)"
    res = subprocess.run([str(python), "-c", "import pytriton.triton"], capture_output=True,
                         text=True, timeout=120, check=False)
    if res.returncode:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import pytriton: {tail}"
    return None


def libdir_of(python: Path) -> str:
    """``sysconfig`` LIBDIR of another interpreter (its libpython's directory)."""
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run([str(python), "-c", code],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _Stop(Exception):
    """SIGINT / SIGTERM / SIGHUP, raised in the main thread so ``finally`` stops the server."""


def _raise_stop(signum: int, _frame: object) -> None:
    # once: a second signal must not interrupt the cleanup it started
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


class TritonServerProcess:
    """``with TritonServerProcess(bundle) as srv: srv.url`` -> a ready server on loopback."""

    def __init__(self, bundle: str | os.PathLike, *, host: str = "127.0.0.1",
                 ports: tuple[int, int, int] | None = None, python: Path | None = None,
                 max_batch: int = 32, queue_delay_us: int = 2000, precision: str = "fp32",
                 backend: str = "auto", gallery: str | os.PathLike | None = None,
                 top: int = 10, start_timeout_s: float = 120.0, allow_remote: bool = False,
                 stop_with_parent: bool = False):
        check_host(host, allow_remote)
        self.bundle, self.host = str(bundle), host
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3, host)
        self.python = python or triton_python()
        self.args = ["--max-batch", str(max_batch), "--queue-delay-us", str(queue_delay_us),
                     "--precision", precision, "--backend", backend, "--top", str(top)]
        self.gallery = gallery
        if gallery is not None:
            self.args += ["--gallery", str(gallery)]
        if allow_remote:
            self.args.append("--allow-remote")
        self.models = [*MODELS, *(["ssft_search"] if gallery is not None else [])]
        self.start_timeout_s = start_timeout_s
        self.stop_with_parent = stop_with_parent
        # for the restricted endpoints (statistics, ...): headers={TOKEN_HEADER: token}; the
        # token lives in a 0600 file in a 0700 folder of our own, removed by stop()
        self.private_dir = Path(tempfile.mkdtemp(prefix="ssft-serve-"))
        self.token_file = write_token_file(self.private_dir)
        self.access_token = read_token_file(self.token_file)
        self.proc: subprocess.Popen | None = None
        self.files: RunFiles | None = None
        # The server's output goes to a file (a pipe nobody reads would fill and stall it).
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            "w+", prefix="ssft-triton-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        ld = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir_of(self.python), *ld])
        env[TOKEN_FILE_ENV] = str(self.token_file)     # a path: the token itself stays off argv
        env.pop(PARENT_ENV, None)
        if self.stop_with_parent:
            env[PARENT_ENV] = str(os.getpid())        # the server stops when we die
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        return env

    def start(self) -> TritonServerProcess:
        if self.gallery is not None:  # refuse another bundle's gallery before anything starts
            from ssft_deploy.bundle import load_bundle
            from ssft_deploy.gallery import bundle_binding
            from ssft_deploy.serving.pytriton_server import load_gallery

            load_gallery(self.gallery, bundle_binding(load_bundle(self.bundle)))
        check_ports_free(self.host, {"http": self.http_port, "grpc": self.grpc_port,
                                     "metrics": self.metrics_port})
        reason = unavailable_reason(self.python)
        if reason:
            raise EngineError(f"cannot start the Triton server: {reason}")
        cmd = [str(self.python), "-m", "ssft_deploy.serving.pytriton_server",
               "--bundle", self.bundle, "--host", self.host, "--http-port", str(self.http_port),
               "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
               *self.args]
        since = time.time()
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.files = RunFiles(self.proc.pid, since)   # its session id is its pid
        self._wait_ready()
        self.files.record()
        return self

    def wait(self) -> int:
        """Wait until the server exits (recording its temporary files meanwhile); its exit code."""
        while True:
            self.files.record()
            try:
                return self.proc.wait(RECORD_EVERY_S)
            except subprocess.TimeoutExpired:
                continue

    def _ready(self) -> bool:
        try:
            for path in ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in self.models)]:
                with urllib.request.urlopen(f"http://{self.url}{path}", timeout=2) as r:
                    if r.status != 200:
                        return False
            return True
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"the Triton server exited with code {self.proc.returncode} "
                                  f"before it was ready:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.25)
        self.stop()
        raise EngineError(f"the Triton server was not ready within {self.start_timeout_s:g} s:\n"
                          f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.closed:
            self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def admin_hint(self) -> dict[str, str]:
        """How to reach the admin endpoints (statistics, model repository, logging, ...)."""
        return {"token_file": str(self.token_file), "header": TOKEN_HEADER,
                "example": f"curl -H \"{TOKEN_HEADER}: $(cat {self.token_file})\" "
                           f"http://{self.url}/v2/models/stats"}

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (PyTriton's clean stop); SIGKILL whatever of its process group lingers; remove
        the temporary files it left (shared memory, model folders, workspace) and the token
        folder."""
        try:
            return self._stop(timeout_s)
        finally:
            shutil.rmtree(self.private_dir, ignore_errors=True)

    def _stop(self, timeout_s: float) -> int | None:
        if self.proc is None:                # never started: nothing ran, nothing to keep
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
            return None
        if self.proc.poll() is None:
            self.files.record()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait(10)
        # tritonserver, its Python backend stubs and their helpers share the session: none may
        # outlive the server (they would keep ports and shared memory).
        deadline = time.monotonic() + 10
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._kill_group()
        removed = self.files.cleanup()
        if removed:
            log.warning("removed what the server left behind: %s", ", ".join(removed))
        self.log.close()
        if self.proc.returncode == 0:       # keep the log of a server that failed
            Path(self.log.name).unlink(missing_ok=True)
        return self.proc.returncode

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind (loopback by default)")
@click.option("--allow-remote", is_flag=True,
              help="allow a non-loopback --host (reachable from other machines)")
@click.option("--http-port", default=8000, show_default=True)
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True)
@click.option("--max-batch", default=32, show_default=True)
@click.option("--queue-delay-us", default=2000, show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--gallery", type=click.Path(exists=True, dir_okay=False), default=None,
              help="gallery .npz to serve ssft_search over")
def main(bundle: str, host: str, allow_remote: bool, http_port: int, grpc_port: int,
         metrics_port: int, max_batch: int, queue_delay_us: int, precision: str,
         gallery: str | None) -> None:
    """Serve BUNDLE (on loopback by default) from the .venv-triton environment until Ctrl-C,
    SIGTERM or SIGHUP; prints one JSON line: endpoints, models, and how to reach the admin
    endpoints. Exits 1 when the server stops on its own, 2 on a bad argument."""
    take_stop_signals(_raise_stop)
    srv = None
    try:
        srv = TritonServerProcess(bundle, host=host, ports=(http_port, grpc_port, metrics_port),
                                  max_batch=max_batch, queue_delay_us=queue_delay_us,
                                  precision=precision, gallery=gallery, allow_remote=allow_remote,
                                  stop_with_parent=True)
        srv.start()
        click.echo(json.dumps({"http": f"http://{srv.url}", "grpc": srv.grpc_port,
                               "models": srv.models, "log": srv.log.name,
                               "server_pid": srv.proc.pid, "admin": srv.admin_hint()}))
        sys.stdout.flush()
        code = srv.wait()
        srv.stop()
        click.echo(f"error: the server stopped unexpectedly (exit code {code}); its log: "
                   f"{srv.log.name}", err=True)
        sys.exit(1)
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if srv is not None:
            srv.stop()


if __name__ == "__main__":
    main()
