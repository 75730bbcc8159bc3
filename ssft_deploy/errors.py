"""The one exception family of the package: every error a user can cause is an ``SSFTError``."""

from __future__ import annotations


class SSFTError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class BundleError(SSFTError):
    """A missing, tampered, foreign or mismatched model bundle (re-export it)."""


class CheckpointError(SSFTError):
    """A checkpoint that is missing, truncated, foreign or of another format."""


class InputError(SSFTError):
    """Bad input data: unreadable image, degenerate box, wrong array shape or dtype."""


class DatasetError(SSFTError):
    """A dataset folder that does not follow the SYSU-MM01 / RegDB layout."""


class EngineError(SSFTError):
    """An inference backend that is unavailable here or failed to run."""


class EngineLimitError(EngineError):
    """More rows than an engine accepts (a TensorRT profile's max), and no engine that can."""


class QueueFullError(SSFTError):
    """The frame batcher's bounded queue is full (the submission was not accepted)."""


class GalleryError(SSFTError):
    """A gallery file that is corrupt, foreign, or an invalid gallery operation."""


class ConfigError(SSFTError):
    """An option or argument outside its allowed values (the message names the allowed ones)."""


class ServingError(SSFTError):
    """The server cannot start or serve as asked (port in use, exposed host, server exited)."""
