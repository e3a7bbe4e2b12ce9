"""Crash- and full-disk-safe file writes: a set of files is serialised in memory, written to temp files, and renamed
over the old ones only when every write succeeded, so a killed process or a full disk never leaves a half-written or
mixed set. Serialising first also turns a full disk into a plain OSError (torch.save and safetensors writing to a
path wrap it in their own error types)."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Mapping


class DiskFullError(OSError):
    """A write failed for lack of space; the files it would have replaced are untouched."""


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_files(files: Mapping[Path, bytes | memoryview], before_rename: Callable[[], None] | None = None) -> None:
    """Write each payload to `<path>.tmp` (fsync), call before_rename, then rename all over their paths. On any failure
    the temp files are removed and the old files stay as they were; a full disk is a DiskFullError naming the path
    and the free space."""
    temps = {Path(path): Path(path).with_name(Path(path).name + ".tmp") for path in files}
    current = None
    try:
        for path, data in files.items():
            current = Path(path)
            current.parent.mkdir(parents=True, exist_ok=True)
            _write_bytes(temps[current], data)
    except BaseException as err:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(err.errno, f"no space left on the disk to write {current} ({free_space(current.parent)} "
                                           f"free); the previous files there are intact: free some space and run the "
                                           f"same command again") from err
        raise
    if before_rename is not None:
        before_rename()
    for path, tmp in temps.items():
        tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    """write_files for one text file."""
    write_files({Path(path): text.encode()})


def free_space(directory: Path) -> str:
    """Free space on the disk holding directory (or its nearest existing parent), e.g. '12.3 MiB'."""
    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    free = float(shutil.disk_usage(directory).free)
    for unit in ("B", "KiB", "MiB"):
        if free < 1024:
            return f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} GiB"
