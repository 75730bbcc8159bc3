"""What a server run owns beyond its processes: its stop signals and its temporary files.

Signals: a process inherits ignored signals and its signal mask across ``exec`` (a shell
script's ``ssft-serve &`` starts with SIGINT ignored; a caller may have blocked SIGTERM), so a
stop signal could go unseen, and the launcher's SIGINT to the server with it: the server was
then killed after 30 s instead of stopping. :func:`take_stop_signals` makes them ours.

Temporary files: tritonserver's Python backend keeps one 4 MB region per model instance in
``/dev/shm`` (named ``pytrtion<PyTriton pid>-...``, PyTriton's spelling), PyTriton's tensor
store more (``psm_...``); tritonserver writes each model to ``/tmp/folderXXXXXX``; PyTriton
unpacks tritonserver into a workspace (``~/.cache/pytriton/workspace_*``). A clean stop removes
them all; a killed process cannot. :class:`RunFiles` records those the server's processes use
while they run (maps, command lines) and removes what is left once they are gone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
from collections.abc import Callable
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PROC_DIR = Path("/proc")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# PyTriton's workspace; tritonserver's model folders (mkdtemp "/tmp/folderXXXXXX")
RUN_FOLDERS = re.compile(r"(/\S*/pytriton/workspace_\w+|/tmp/folder\w{6})(?:/|$)")
CLOCK_SLACK_S = 1.0  # file times come from a coarser clock than time.time()


def take_stop_signals(handler: Callable | int) -> None:
    """Route SIGINT, SIGTERM and SIGHUP to ``handler`` and unblock them, whatever this process
    inherited; an ignored SIGHUP stays ignored (``nohup``). Main thread only; the processes it
    starts then inherit a clean mask and default dispositions."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        signal.signal(sig, handler)


def backend_prefix(pytriton_pid: int) -> str:
    """The name prefix of the Python backend's regions of the PyTriton process ``pytriton_pid``."""
    return f"pytrtion{pytriton_pid}-"


def session_pids(session: int, proc_dir: Path = PROC_DIR) -> list[int]:
    """Processes of session ``session`` (the server runs in its own, led by its PyTriton pid)."""
    pids = []
    for d in proc_dir.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] == str(session):   # state ppid pgrp session
            pids.append(int(d.name))
    return pids


def mapped_files(pid: int, folder: Path, proc_dir: Path = PROC_DIR) -> set[str]:
    """Names of the files in ``folder`` that process ``pid`` maps (deleted ones excluded)."""
    try:
        maps = (proc_dir / str(pid) / "maps").read_text()
    except OSError:
        return set()
    pattern = re.compile(rf"\s{re.escape(str(folder))}/([^/\s]+)$", re.MULTILINE)
    return set(pattern.findall(maps))


def named_folders(pid: int, proc_dir: Path = PROC_DIR) -> set[Path]:
    """PyTriton workspaces and tritonserver model folders on process ``pid``'s command line."""
    try:
        args = (proc_dir / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return set()
    return {Path(m) for a in args for m in RUN_FOLDERS.findall(a)}


class RunFiles:
    """The temporary files of one server run: ``record()`` while it runs (what its session's
    processes map in ``/dev/shm`` and name on their command lines), ``cleanup()`` once they are
    gone. Only this user's regular files / folders changed since the run started (``since``:
    ``time.time()`` before it started) are removed: another user's or an older one never is."""

    def __init__(self, pytriton_pid: int, since: float, *, shm_dir: Path = SHM_DIR,
                 proc_dir: Path = PROC_DIR) -> None:
        self.pid, self.since = pytriton_pid, since
        self.shm_dir, self.proc_dir = Path(shm_dir), Path(proc_dir)
        self.shm: set[str] = set()
        self.folders: set[Path] = set()

    def record(self) -> None:
        """Add what the run's processes use now (the session the PyTriton process leads)."""
        for pid in session_pids(self.pid, self.proc_dir):
            self.shm |= mapped_files(pid, self.shm_dir, self.proc_dir)
            self.folders |= named_folders(pid, self.proc_dir)

    def cleanup(self) -> list[str]:
        """Remove the recorded files and folders and the Python backend's regions that are
        left; returns the paths removed. Call once the run's processes are gone."""
        prefix = backend_prefix(self.pid)
        try:
            names = self.shm | {p.name for p in self.shm_dir.iterdir() if p.name.startswith(prefix)}
        except OSError:
            names = self.shm
        removed = []
        for path in [*(self.shm_dir / n for n in sorted(names)), *sorted(self.folders)]:
            try:
                st = path.lstat()
                if st.st_uid != os.geteuid() or st.st_ctime < self.since - CLOCK_SLACK_S:
                    continue
                if stat.S_ISREG(st.st_mode):
                    path.unlink()
                elif stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(path)
                else:
                    continue
                removed.append(str(path))
            except OSError:       # gone meanwhile, or not ours to remove
                continue
        return removed
