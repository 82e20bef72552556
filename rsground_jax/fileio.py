"""Writing files and folders so that an interruption never leaves a half-written one under its final name,
and writing into a folder never deletes what is already there. Standard library only.

  * `atomic_path`, `atomic_write_text` / `atomic_write_json`: a file is written beside its final name and renamed onto it,
    so a reader sees the old file or the whole new one, never an empty or cut-off one (a full disk leaves
    the old file, or none).
  * `staged_dir(path)`: a folder is built under a hidden name beside `path` (`.NAME.partial-PID`) and renamed
    to `path` once complete. `path` must not exist or be an empty folder: a folder with files in it is refused,
    not merged into or cleaned. A partial folder left by a killed process is removed by the next writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from .errors import UserError


class DestinationNotEmptyError(UserError, FileExistsError):
    """A folder to be written already holds files (or is a file)."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix, so writers that go by it keep working); when the
    block ends without an error the file written there replaces `path`, otherwise it is removed."""
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (tmp, None):
            raise OSError(e.errno, e.strerror, path) from None  # name the file the user asked for
        raise


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path, obj, **dump_kwargs) -> None:
    atomic_write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def check_destination(path, what: str = "destination") -> None:
    """Raise `DestinationNotEmptyError` unless `path` is missing or an empty folder."""
    p = Path(path)
    if p.is_dir():
        if any(p.iterdir()):
            raise DestinationNotEmptyError(f"{path}: the {what} folder is not empty; choose a new folder (nothing in "
                                           "it was changed)")
    elif p.exists() or p.is_symlink():
        raise DestinationNotEmptyError(f"{path}: the {what} is a file, not a folder")


def check_writable_dir(path, what: str) -> None:
    """Raise `UserError` unless files can be written in the folder `path`, or it can be created; creates
    nothing, so a run refused later leaves no empty folder behind."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: cannot be a folder, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {'the folder' if probe == p else f'its parent {probe}'} is not writable")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def remove_stale_partials(path) -> None:
    """Remove the partial folders of `path` whose writing process is gone (killed mid-write)."""
    path = Path(path).absolute()
    for p in path.parent.glob(f".{path.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(path, what: str = "destination"):
    """Yield a new empty folder; when the block ends without an error it becomes `path`.

    `path` must be missing or an empty folder (checked before and again at the rename). On an error the
    partial folder is removed and `path` is as it was.
    """
    path = Path(path).absolute()
    check_destination(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, path, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, path: Path, what: str = "destination") -> None:
    """Rename the finished folder `tmp` to `path` (missing or empty; an empty folder is replaced)."""
    check_destination(path, what)
    if path.is_dir():
        path.rmdir()
    os.rename(tmp, path)
