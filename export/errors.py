"""Errors of the export side (all ``SSFTError``s: the CLIs print them and exit 2)."""

from __future__ import annotations

from ssft_deploy.errors import SSFTError


class ExportError(SSFTError):
    """A model or option set that could not be exported to a valid bundle."""


class GateError(SSFTError):
    """The parity gate could not finish (nothing was recorded; the bundle is not published)."""


class ParityError(SSFTError):
    """The parity gate finished and failed at least one variant (recorded in the manifest)."""
