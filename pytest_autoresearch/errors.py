"""The engine's domain errors, and the one line an internal failure is told in.

A step that cannot do its work because of the file system (permissions, a full disk, a file that cannot be
replaced, a file name that is not UTF-8) raises; the iteration turns it into a `crash` record whose reason
names the file and the OS error, and the session goes on. Only a results store that cannot be written stops
the session: an iteration it could not record must change nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class EngineError(Exception):
    """A step could not do its work; str() is the one line 'file: what went wrong (ErrorType)'."""


class LandingFailed(EngineError):
    """A verdict could not be written into the workspace; what it had replaced is put back."""


class StorageUnwritable(EngineError):
    """The results store (its folder or results file) cannot be written: the session stops."""


def printable(path: str | os.PathLike[str]) -> str:
    """A path as text any terminal can show: bytes that are not UTF-8 (surrogate escapes) as \\xNN."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def describe(error: BaseException, shown: Callable[[Path], str] = str) -> str:
    """The one line for an internal failure: 'file: message (ErrorType)', the file shown through `shown`."""
    if isinstance(error, EngineError):
        return str(error)
    if isinstance(error, OSError):
        message = f"{error.strerror or error} ({type(error).__name__})"
        return f"{printable(shown(Path(error.filename)))}: {message}" if error.filename is not None else message
    return f"{type(error).__name__}: {error}"


@contextmanager
def naming(path: Path, instead: bool = False) -> Iterator[None]:
    """Name `path` in the block's OSErrors that name no file (a failed write or flush, as on a full disk, names
    none); with `instead`, in all of them (a temp file staged for path is not the file the user knows)."""
    try:
        yield
    except OSError as error:
        if error.filename is not None and not instead:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


class Ended(Exception):
    """A step ended the iteration before the policy's verdict. Each kind carries its record's status; str() is
    the record's reason. `log` names another log than the iteration's (a baseline run's); `runs` holds what the
    candidate's runs measured before the end (run.Runs), which the record keeps."""
    status = ""

    def __init__(self, reason: str, *, log: str | None = None, runs: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log = log
        self.runs = runs


class Crashed(Ended):
    """The mutator or a runner failed, timed out or gave no score, or the file system failed an engine step."""
    status = "crash"


class Rejected(Ended):
    """The candidate broke a mutation limit or a scorer constraint: it is no candidate."""
    status = "rejected"


class Unchanged(Ended):
    """The candidate changed nothing: discarded without a run."""
    status = "discard"


class Interrupted(Ended):
    """Ctrl-C or SIGTERM before a verdict."""
    status = "interrupted"
