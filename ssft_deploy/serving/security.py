"""Who may reach the server: loopback unless asked, free ports, the admin token in a 0600 file.

The admin token travels as a file path (``$SSFT_TRITON_TOKEN_FILE``): never on the launcher's or
the PyTriton server's command line, which every local user can read with ``ps``. Triton itself
(``tritonserver``) accepts the token only as a command-line flag, where PyTriton puts it, so local
users can read it there: the token keeps the admin endpoints from other hosts, not from users of
this machine.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import secrets
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from ssft_deploy.errors import ServingError

TOKEN_FILE_ENV = "SSFT_TRITON_TOKEN_FILE"
PARENT_ENV = "SSFT_SERVE_PARENT_PID"   # set by the launcher: the server stops when it dies
TOKEN_HEADER = "triton-access-token"
log = logging.getLogger("ssft_deploy.serving")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``; warn loudly when allowed."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ServingError(
            f"--host {host!r} is not a loopback address: the server would accept requests from "
            "other machines. Pass --allow-remote to do that on purpose (put an authenticating "
            "proxy in front: inference requests carry no credentials).")
    log.warning("SERVING ON %s, REACHABLE FROM OTHER MACHINES (--allow-remote): inference is "
                "open to anyone who can reach this address; admin endpoints need the token.", host)


def check_ports_free(host: str, ports: Mapping[str, int]) -> None:
    """ServingError naming the first of ``{"http": 8000, ...}`` that cannot be bound on host."""
    for name, port in ports.items():
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ServingError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # as a server binds: SO_REUSEADDR, so a port in TIME_WAIT counts as free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as exc:
                why = "is already in use" if exc.errno == errno.EADDRINUSE else \
                    f"cannot be bound ({exc.strerror})"
                raise ServingError(f"{name} port {port} on {host} {why}: stop what holds it or "
                                   f"choose another with --{name}-port") from None


def write_token_file(folder: str | os.PathLike) -> Path:
    """A fresh random token in ``folder/admin-token``, created with mode 0600."""
    path = Path(folder) / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))
    return path


def read_token_file(path: str | os.PathLike) -> str:
    """The token in ``path``; ServingError when it is missing, empty or readable by others."""
    try:
        st = os.stat(path)
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ServingError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ServingError(f"the admin token file {path} is readable by other users "
                           f"(mode {stat.filemode(st.st_mode)}): chmod 600 it")
    if not token:
        raise ServingError(f"the admin token file {path} is empty")
    return token


def term_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when our parent dies (Linux ``PR_SET_PDEATHSIG``), so a killed
    launcher leaves no server behind; stop at once if it is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, 15)   # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        return                                          # not Linux: the launcher's stop() only
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), 15)
