"""`ssft-serve` as a user runs it: SIGTERM (whatever signal state it inherited), a killed launcher
or a killed tritonserver leave nothing behind (processes, ports, folders, /dev/shm), a busy port
or an exposed host is a clear error at once, the admin token sits in a 0600 file off argv."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from ssft_deploy.serving.launch import free_ports
from tests.test_serving import infer, needs_triton

REPO = Path(__file__).resolve().parents[1]
MARK = "SSFT_TEST_SERVE_MARK"
SHM = Path("/dev/shm")
# What a shell script's `ssft-serve &` inherits (SIGINT and SIGQUIT ignored), and a caller that
# also blocked the stop signals: both survive exec into the launcher.
BACKGROUND_JOB = ("import os, signal, sys; "
                  "[signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)]; "
                  "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries ``mark`` (ours: the launcher and all it started)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"{MARK}={mark}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Launch:
    """``python -m ssft_deploy.serving.launch`` in a private TMPDIR, killed by id at the end."""

    def __init__(self, tmp: Path, bundle: Path, *args: str, background_job: bool = False):
        self.mark, self.tmp = uuid.uuid4().hex, tmp / "tmp"
        self.tmp.mkdir()
        self.ports = free_ports(3)
        env = {**os.environ, "TMPDIR": str(self.tmp), MARK: self.mark,
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        ports = ["--http-port", str(self.ports[0]), "--grpc-port", str(self.ports[1]),
                 "--metrics-port", str(self.ports[2])]
        wrap = [sys.executable, "-c", BACKGROUND_JOB] if background_job else [sys.executable]
        self.proc = subprocess.Popen(
            [*wrap, "-m", "ssft_deploy.serving.launch", "--bundle", str(bundle),
             *ports, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout],
                         daemon=True).start()

    def ready(self, timeout: float = 240) -> dict:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            pytest.fail(f"no ready line within {timeout} s: {self.proc.poll()}")

    def folders(self) -> set[Path]:
        """Temporary folders and files our processes use now: PyTriton's workspace
        (~/.cache/pytriton), tritonserver's model folders (/tmp/folder*), shared memory
        (/dev/shm: the Python backend's regions, PyTriton's tensor store)."""
        found = set()
        for pid in marked_pids(self.mark):
            line = cmdline(pid)
            found |= {Path(m) for m in re.findall(r"(/\S*/pytriton/workspace_\w+)", line)}
            found |= {Path(m) for m in re.findall(r"(/tmp/folder\w+)", line)}
            found |= set(SHM.glob(f"pytrtion{pid}-*"))
            try:
                maps = (Path("/proc") / str(pid) / "maps").read_text()
            except OSError:
                continue
            found |= {Path(m) for m in re.findall(rf"({SHM}/\S+)$", maps, re.MULTILINE)}
        return found

    def pid_of(self, program: str) -> int:
        """Our process whose command line runs ``program``."""
        pids = [p for p in marked_pids(self.mark) if cmdline(p).split(" ")[0].endswith(program)]
        assert len(pids) == 1, [cmdline(p)[:120] for p in marked_pids(self.mark)]
        return pids[0]

    def leftovers(self, wait_s: float = 15) -> list[str]:
        deadline = time.monotonic() + wait_s
        while (pids := marked_pids(self.mark)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [f"{p}: {cmdline(p)[:120]}" for p in pids]

    def kill_all(self) -> None:
        for pid in marked_pids(self.mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def statistics_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(f"{url}/v2/models/stats",
                                 headers={"triton-access-token": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def one_inference(url: str) -> None:
    """One request, so PyTriton's tensor store holds shared memory too."""
    out = infer(url, "ssft_extract_rgb", images=np.zeros((1, 3, 16, 8), np.float32))
    assert out["shared"].shape[0] == 1


@needs_triton
def test_sigterm_stops_everything_and_the_token_stays_off_argv(tiny_bundle, tmp_path):
    """Started as a script's background job (SIGINT ignored, stop signals blocked): today
    SIGTERM is never seen, or the server ignores the launcher's SIGINT for 30 s and is then
    killed, leaving its shared memory in /dev/shm."""
    run = Launch(tmp_path, tiny_bundle, background_job=True)
    try:
        info = run.ready()
        one_inference(info["http"][len("http://"):])
        admin = info.get("admin", {})
        token_file = Path(admin.get("token_file", tmp_path / "none"))
        mode = stat.S_IMODE(token_file.stat().st_mode) if token_file.exists() else None
        token = token_file.read_text() if token_file.exists() else None
        # launcher and PyTriton server (tritonserver takes it only on argv: see security.py)
        ours = [p for p in (run.proc.pid, info.get("server_pid")) if p and cmdline(p)]
        on_argv = [p for p in ours if token and token in cmdline(p)]
        status = (statistics_status(info["http"], None), statistics_status(info["http"], token))
        folders = run.folders()
        run.proc.send_signal(signal.SIGTERM)
        rc = run.proc.wait(25)            # a clean stop: before the launcher's 30 s SIGKILL
        left = run.leftovers()
        assert not left, f"processes left after SIGTERM: {left}"
        assert rc == 0, run.proc.stderr.read()[-2000:]
        assert all(port_free(p) for p in run.ports)
        # token folder and log gone (.ses: onnxruntime's own session-id file, shared by every
        # ORT user of this TMPDIR, not the server's to remove)
        assert sorted(x.name for x in run.tmp.iterdir() if x.name != ".ses") == []
        assert len(folders) >= 2 and any(f.parent == SHM for f in folders)
        assert [f for f in folders if f.exists()] == []
        assert mode == 0o600 and len(ours) == 2 and on_argv == []
        assert status[0] in (400, 401, 403) and status[1] == 200, status
        assert admin.get("header") == "triton-access-token"
    finally:
        run.kill_all()


@needs_triton
def test_killed_launcher_takes_the_server_with_it(tiny_bundle, tmp_path):
    run = Launch(tmp_path, tiny_bundle)
    try:
        run.ready()
        folders = run.folders()
        run.proc.kill()                               # SIGKILL: no cleanup code runs in it
        run.proc.wait(10)
        left = run.leftovers(wait_s=60)
        assert not left, f"processes left after the launcher was killed: {left}"
        assert all(port_free(p) for p in run.ports)
        assert len(folders) >= 2 and [f for f in folders if f.exists()] == []
    finally:
        run.kill_all()


@needs_triton
def test_killed_tritonserver_is_an_error_and_leaves_nothing(tiny_bundle, tmp_path):
    """tritonserver killed under the server (OOM killer, an operator): today the launcher exits 0
    and the Python backend's shared memory stays in /dev/shm."""
    run = Launch(tmp_path, tiny_bundle)
    try:
        info = run.ready()
        one_inference(info["http"][len("http://"):])
        folders = run.folders()
        os.kill(run.pid_of("tritonserver"), signal.SIGKILL)
        rc = run.proc.wait(60)
        err = run.proc.stderr.read()
        left = run.leftovers()
        assert not left, f"processes left after tritonserver was killed: {left}"
        assert any(f.parent == SHM for f in folders)
        assert [f for f in folders if f.exists()] == []
        assert all(port_free(p) for p in run.ports)
        assert rc == 1 and "the server stopped unexpectedly" in err, (rc, err[-2000:])
    finally:
        run.kill_all()


def test_port_in_use_is_a_clear_error_at_once(tiny_bundle, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = Launch(tmp_path, tiny_bundle, "--grpc-port", str(port))
        try:
            _, err = run.proc.communicate(timeout=60)
        finally:
            run.kill_all()
    assert run.proc.returncode == 2, err[-2000:]
    assert f"grpc port {port} on 127.0.0.1 is already in use" in err and "Traceback" not in err
    assert sorted(x.name for x in run.tmp.iterdir()) == []


def test_non_loopback_host_needs_allow_remote(tiny_bundle, tmp_path):
    run = Launch(tmp_path, tiny_bundle, "--host", "0.0.0.0")
    try:
        _, err = run.proc.communicate(timeout=60)
    finally:
        run.kill_all()
    assert run.proc.returncode == 2 and "--allow-remote" in err and "Traceback" not in err


CHILD = """
import mmap, os, sys, time
shm, workspace = sys.argv[1], sys.argv[2]
os.makedirs(workspace)
with open(os.path.join(shm, "psm_mapped"), "w+b") as f:
    f.truncate(4096)
    kept = mmap.mmap(f.fileno(), 4096)
open(os.path.join(shm, f"pytrtion{os.getpid()}-region"), "wb").close()
print("ready", flush=True)
time.sleep(60)
"""


def test_run_files_removes_what_a_killed_run_left(tmp_path):
    """A process killed with files mapped in (a stand-in for) /dev/shm and a workspace on its
    command line: cleanup removes those and its Python backend regions, nothing else."""
    from ssft_deploy.serving.lifecycle import RunFiles

    shm, workspace = tmp_path / "shm", tmp_path / "pytriton" / "workspace_t3st"
    shm.mkdir()
    (shm / "someone_else").write_bytes(b"x")
    since = time.time()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(shm), str(workspace / "bin")],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        (shm / f"pytrtion{child.pid + 1}-other").write_bytes(b"x")   # another server's region
        files = RunFiles(child.pid, since, shm_dir=shm)
        files.record()
    finally:
        child.kill()
        child.wait(10)
    assert RunFiles(child.pid, time.time() + 60, shm_dir=shm).cleanup() == []   # older: kept
    removed = files.cleanup()
    assert sorted(removed) == sorted([str(shm / "psm_mapped"),
                                      str(shm / f"pytrtion{child.pid}-region"), str(workspace)])
    assert sorted(p.name for p in shm.iterdir()) == [f"pytrtion{child.pid + 1}-other",
                                                     "someone_else"]
    assert not workspace.exists()


def test_stop_signals_are_ours_whatever_was_inherited():
    """SIGINT ignored and SIGINT / SIGTERM blocked by the parent: after take_stop_signals both
    reach the handler; an ignored SIGHUP (nohup) stays ignored."""
    code = ("import os, signal; from ssft_deploy.serving.lifecycle import take_stop_signals; "
            "seen = []; take_stop_signals(lambda s, f: seen.append(s)); "
            "os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGINT); "
            "print(seen == [signal.SIGTERM, signal.SIGINT], "
            "signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)")
    prefix = BACKGROUND_JOB.replace("signal.SIGQUIT)", "signal.SIGQUIT, signal.SIGHUP)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", prefix, "-c", code], env=env, timeout=60, check=False,
                         capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]
