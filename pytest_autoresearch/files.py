"""Atomic file replacement: readers see the old content or the new one, never a half-written file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import naming


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_prefix(path: Path) -> str:
    """How a temp file staged for path is named, `.<name>.<pid>-...tmp`: the pid tells a dead writer's apart."""
    return f".{path.name}.{os.getpid()}-"


def remove_dead_temp_files(paths: Iterable[Path]) -> None:
    """Temp files (named by temp_prefix) among paths whose writer was killed before it could rename or remove them."""
    for tmp in paths:
        pid = tmp.name.removesuffix(".tmp").rpartition(".")[2].partition("-")[0]
        if tmp.name.endswith(".tmp") and pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace path with data (str is written as UTF-8, newlines untranslated) through a temp file in the
    same folder, fsynced and renamed over it. An existing file's mode is kept (an executable script stays
    executable); a new file gets the mode open() would give it (0666 less the umask), not mkstemp's 0600,
    so reports stay readable by others. On any failure the temp file is removed and path is untouched."""
    path = Path(path)
    with naming(path, instead=True):
        _write_atomic(path, data)


def _write_atomic(path: Path, data: bytes | str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
