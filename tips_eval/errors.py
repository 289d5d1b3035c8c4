"""Errors that reach the user as one clear line (plus an optional hint).

Every error raised for bad input derives from :class:`TipsEvalError`; the CLI
prints ``error: <message>`` and ``hint: <hint>`` and exits non-zero, and shows
a traceback only with ``--debug``. Each subclass also derives from the
built-in exception a caller would expect (``FileNotFoundError``,
``ValueError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class TipsEvalError(Exception):
    """Base class: a message naming the file/key/value and what was expected."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, hint appended so logs keep it
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class CheckpointError(TipsEvalError, ValueError):
    """A checkpoint is missing keys, has wrong shapes, or is not what was named."""


class CheckpointNotFoundError(TipsEvalError, FileNotFoundError):
    """A weights file is not on disk and cannot be downloaded."""


class TokenizerError(TipsEvalError, ValueError):
    """A tokenizer file is missing or is not a SentencePiece model."""


class ImageSizeError(TipsEvalError, ValueError):
    """Pixels whose height or width is not a multiple of the patch size."""


class NoTextTowerError(TipsEvalError, NotImplementedError):
    """Text was asked of an image-only encoder."""


class UnknownNameError(TipsEvalError, KeyError):
    """A model, task, dataset or suite name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return TipsEvalError.__str__(self)


class DatasetLayoutError(TipsEvalError, FileNotFoundError):
    """A dataset root that does not have the expected on-disk layout."""


class BadImageError(TipsEvalError, OSError):
    """An image file that cannot be decoded."""


class DataError(TipsEvalError, ValueError):
    """Inconsistent data: class counts, mask sizes, labels out of range, NaN features."""


class CacheError(TipsEvalError, OSError):
    """The feature cache cannot be written (disk full, permissions) or is corrupt."""
