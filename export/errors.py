"""Errors of the export step (all :class:`~esccs.errors.EsccsError`, so the CLI prints them as one line)."""

from __future__ import annotations

from esccs.errors import EngineMismatchError, EsccsError

__all__ = ["EngineMismatchError", "ExportError", "ParityError"]


class ExportError(EsccsError):
    """An export could not be produced (exporter failure, unwritable output, TensorRT build failure)."""


class ParityError(ExportError):
    """The exported model disagrees with PyTorch beyond the tolerance and ``strict`` was set."""
