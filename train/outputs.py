"""Output paths of the CLIs, checked before any work starts (so a typo never costs a training
or an evaluation): a file path must be creatable, a folder path must be a folder or creatable."""

from __future__ import annotations

import os
from pathlib import Path

from ssft_deploy.errors import SSFTError


class OutputPathError(SSFTError):
    """An output file or folder that cannot be written."""


def _creatable_dir(folder: Path, option: str, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"{option} {what}: cannot create folder {folder} (a file of that "
                              "name exists); choose another path") from None
    except OSError as exc:
        raise OutputPathError(f"{option} {what}: cannot create folder {folder} "
                              f"({exc.strerror or exc}); choose another path") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {what}: folder {folder} is not writable; "
                              "choose another path")


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Create the parent folder of ``path`` and check that the file can be written there."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file path")
    _creatable_dir(path.parent, option, str(path))
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{option} {path} exists and is not writable")
    return path


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Create ``path`` as a folder (or accept an existing one) and check that it is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is an existing file, not a folder; "
                              "give a folder path")
    _creatable_dir(path, option, str(path))
    return path
