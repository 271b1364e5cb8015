"""A run's sealed files: the task's protected files as the run folder held them just before the runner started.

The runner is the untrusted candidate, and may rewrite anything in its folder while it runs; nothing checks
that folder afterwards. So what must hold after the run, the evaluator (evaluator.py) and the training budget
(budget.py), is read from these bytes, never from the folder the runner had."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from .errors import naming


class SealedFile(NamedTuple):
    data: bytes
    mode: int  # permission bits: an evaluator run as ./evaluate.sh must stay executable


Sealed = dict[str, SealedFile]  # repo-relative path -> the file as it was


def seal(folder: Path, rels: Iterable[str]) -> Sealed:
    """The regular files among `rels` under folder, read now. Links and folders are left out: the workspace
    checks judged them already, and what reads the sealed files reads file contents."""
    sealed: Sealed = {}
    for rel in rels:
        path = folder / rel
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symbolic link
                continue
            raise
        with naming(path), os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode):
                sealed[rel] = SealedFile(f.read(), stat.S_IMODE(st.st_mode))
    return sealed


def unseal(sealed: Mapping[str, SealedFile], folder: Path) -> None:
    """Write the sealed files under folder (an empty one), fresh from their bytes."""
    for rel, file in sealed.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with naming(path):
            path.write_bytes(file.data)
            os.chmod(path, file.mode)
