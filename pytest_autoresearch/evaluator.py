"""task.yaml's `evaluator:`, the sealed evaluation: training and evaluation are two processes. The runner (the
candidate) only has to leave one file, `receives`, in its folder; the task's own evaluator then runs in a fresh
folder holding nothing but the sealed protected files (seal.py: as they were before the runner started) and a
copy of that file, and the score is read from the evaluator's output alone.

Why: scored from the runner's own stdout, a candidate could print its score and exit, or shadow the
evaluation it imports; no check of its folder afterwards helps, since it may rewrite the folder at will.

task.yaml:
    evaluator:
      command: python prepare.py --evaluate model.export
      receives: model.export    # repo-relative: the file the runner must leave in its folder
      max_bytes: 4294967296     # a larger file is a crash, told by stat before anything reads it
      timeout: 600
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .isolation import Isolation, command_wrapper
from .process import ProcessResult, run_logged
from .sandbox import copy_file
from .scorers import clipped
from .seal import SealedFile, unseal

QUOTED_CHARS = 160  # of the evaluator's last line, what a crash reason quotes


@dataclass(frozen=True)
class Evaluator:
    command: str
    receives: str
    max_bytes: int
    timeout: float
    isolation: Isolation | None = None  # None: the command runs unsandboxed, as the user


@dataclass(frozen=True)
class Evaluation:
    folder: Path  # where the evaluator ran, with what it wrote there (a json-file scorer reads it)
    result: ProcessResult
    failure: str | None  # why the run is a crash, quoting the evaluator's last line; None: it exited 0


def clear_received(run_folder: Path, evaluator: Evaluator) -> None:
    """Remove what lies where the runner must leave its file, before it runs: a model from an earlier run (one by
    hand in the workspace, which every copy holds, or the last repeat's) must not pass for this run's."""
    path = run_folder / evaluator.receives
    if not path.parent.resolve().is_relative_to(run_folder.resolve()):
        return  # a folder on the way links out of the run folder: nothing there is the run's to remove
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def received_problem(run_folder: Path, evaluator: Evaluator) -> str | None:
    """Why the file the runner left cannot go to the evaluator, else None. Told from lstat alone, nothing read:
    an oversize file costs nothing, and a link (of the file, or of a folder on its way) is never followed."""
    rel = evaluator.receives
    parts = PurePosixPath(rel).parts
    path = run_folder
    for depth, part in enumerate(parts, 1):
        path = path / part
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return f"the runner left no {rel}"
        if stat.S_ISLNK(st.st_mode):
            return f"{'/'.join(parts[:depth])} is a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return f"{rel} is a folder"
    if not stat.S_ISREG(st.st_mode):
        return f"{rel} is not a regular file"
    if st.st_size > evaluator.max_bytes:
        size, limit = _size(st.st_size), _size(evaluator.max_bytes)
        if size == limit:
            size, limit = f"{st.st_size:,} bytes", f"{evaluator.max_bytes:,} bytes"
        return f"{rel} is {size}, over evaluator.max_bytes ({limit})"
    return None


@contextmanager
def evaluation(evaluator: Evaluator, rootdir: Path, run_folder: Path, sealed: Mapping[str, SealedFile],
               env: Mapping[str, str], log: BinaryIO, hidden: Iterable[Path] = ()) -> Iterator[Evaluation]:
    """Run the evaluator on what the runner left in run_folder (received_problem found nothing wrong with it),
    in a fresh folder beside run_folder in the iteration's scratch, holding only the sealed files and a copy of
    the received file; with the runner's environment and AUTORESEARCH_EVALUATING=1, its output appended to the
    run's log. The folder is removed once the caller has read the score from it."""
    folder = Path(tempfile.mkdtemp(prefix="evaluator-", dir=run_folder.parent))
    try:
        unseal(sealed, folder)
        received = folder / evaluator.receives
        received.parent.mkdir(parents=True, exist_ok=True)
        copy_file(str(run_folder / evaluator.receives), str(received))
        log.write(f"[autoresearch] evaluator: {evaluator.command}\n".encode())
        log.flush()
        result = run_logged(evaluator.command, folder, {**env, "AUTORESEARCH_EVALUATING": "1"}, evaluator.timeout,
                            log, command_wrapper(evaluator.isolation, rootdir, folder, hidden, env=env))
        yield Evaluation(folder, result, _failure(result, evaluator.timeout))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _failure(result: ProcessResult, timeout: float) -> str | None:
    """'evaluator exited with code 3: <its last non-empty stdout line>': a refusing evaluator says why there."""
    failure = result.failure("evaluator", timeout)
    if failure is None:
        return None
    last = next((line.strip() for line in reversed(result.stdout.splitlines()) if line.strip()), None)
    return failure if last is None else f"{failure}: {clipped(last, QUOTED_CHARS)}"


def _size(n: int) -> str:
    """n bytes as a person reads them: '5.5 GiB', '4 GiB', '12 bytes'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n:,} bytes"
