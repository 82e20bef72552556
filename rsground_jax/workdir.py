"""One run per workdir, and a workdir that remembers the settings it was started with. Standard library only.

`claim(workdir, settings, resume=...)` is how a training command (`rsground sft`, `demo`, and later `grpo`)
takes a workdir:

  * **the lock**: `<workdir>/rsground.lock` is held with `flock` for the life of the process. A second run on
    the same workdir is refused with the running one's pid and command line. The kernel drops the lock when
    its process ends, however it ends (`kill -9` included), so a stale lock file never blocks a resume.
  * **the settings**: `<workdir>/rsground_run.json` keeps the settings of the run that started the workdir.
    A fresh run refuses a workdir that already holds one; a resumed run compares its settings with it and
    refuses every difference it could not honour (`differences`), naming each, instead of going on with the
    old data or checkpoints under new labels.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import UserError
from .fileio import atomic_write_json

LOCK_FILE = "rsground.lock"
RUN_FILE = "rsground_run.json"


class WorkdirInUseError(UserError, ValueError):
    """The workdir is in use by another run, or holds an earlier run that this one may not continue."""


class WorkdirLock:
    """An exclusive `flock` on `<workdir>/rsground.lock`, released on `release()` or when the process ends."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._fd: int | None = None
        self._created = self._lock_created = False

    def acquire(self, announce: bool = True) -> "WorkdirLock":
        self._created = not self.workdir.exists()
        self._lock_created = self._created or not self.path.exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise WorkdirInUseError(f"{self.workdir}: in use by another run ({holder or 'a running process'}); wait "
                                    "for it to finish or choose another workdir") from None
        self._fd = fd
        if announce:
            self.announce()
        return self

    def announce(self) -> None:
        """Write who holds the lock into it, for the message a second run gets."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()}: {_command_line()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _command_line() -> str:
    """This process's command as the user typed it (`rsground ...` also after its re-execution)."""
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    if prog.endswith(os.path.join("rsground_jax", "cli", "__main__.py")):
        prog = "rsground"
    return " ".join([os.path.basename(prog), *sys.argv[1:]])


class Claim(WorkdirLock):
    """A held workdir lock plus the settings to record once the run is under way (`commit`). A run refused
    before it commits leaves the workdir as it found it (a folder it created is removed again)."""

    def __init__(self, workdir, command: str, settings: dict):
        super().__init__(workdir)
        self.command, self.settings = command, settings
        self.committed = False

    def commit(self) -> None:
        """Record the settings: from here on the workdir belongs to this run (and its resumes)."""
        atomic_write_json(self.workdir / RUN_FILE, {"command": self.command, "settings": self.settings}, indent=1)
        self.committed = True

    def release(self) -> None:
        if self._fd is None:
            return
        super().release()
        if not self.committed and self._lock_created:
            self.path.unlink(missing_ok=True)
            if self._created and not any(self.workdir.iterdir()):
                self.workdir.rmdir()


class HeldElsewhere:
    """The claim of a process that is not process 0 of a multi-process run: process 0 holds the workdir."""

    committed = False

    def commit(self) -> None:
        self.committed = True

    def release(self) -> None:
        pass


def claim(workdir, settings: dict, *, resume: bool, command: str,
          differences: Callable[[dict, dict], list[str]], fresh_hint: str = "resume it (--resume)") -> Claim:
    """Lock `workdir` for this process and check `settings` (JSON-able) against the run that started it.

    `resume=False`: a workdir that holds an earlier run's settings is refused (`fresh_hint` says what to do).
    `resume=True`: `differences(saved, settings)` lists what may not change; any difference is refused. A
    workdir with files but no record of a run is refused either way. Returns the held `Claim`: call `commit()`
    once the run's own checks have passed, and `release()` at the end (or let the process end).
    """
    settings = json.loads(json.dumps(settings, default=str))  # the form it is saved in
    lock = Claim(workdir, command, settings).acquire(announce=False)  # a refused run leaves the lock file as it was
    try:
        record = Path(workdir) / RUN_FILE
        if record.is_file():
            try:
                saved = json.loads(record.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise WorkdirInUseError(f"{record}: unreadable run record ({e}); choose another workdir") from None
            if not resume:
                raise WorkdirInUseError(f"{workdir}: holds an earlier {saved.get('command', 'rsground')} run; "
                                        f"{fresh_hint} or choose another workdir")
            if saved.get("command") != command:
                raise WorkdirInUseError(f"{workdir}: holds a `rsground {saved.get('command')}` run, not a "
                                        f"`rsground {command}` one; choose another workdir")
            diff = differences(saved.get("settings", {}), settings)
            if diff:
                raise WorkdirInUseError(f"{workdir}: was started with other settings, which its data and checkpoints "
                                        f"follow: {'; '.join(diff)}. Run with the earlier settings or choose another "
                                        "workdir")
        else:
            others = sorted(p.name for p in Path(workdir).iterdir() if p.name != LOCK_FILE)
            if others:
                raise WorkdirInUseError(f"{workdir}: holds files that no rsground {command} run recorded "
                                        f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); choose an "
                                        "empty or new workdir")
        lock.announce()
    except BaseException:
        lock.release()
        raise
    return lock
