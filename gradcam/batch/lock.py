"""One run at a time per output folder.

Two runs appending to the same ``records.jsonl`` lose data: the same images recorded twice, or records that
point at another image's pictures. A run therefore holds an exclusive ``flock`` on ``gradcam.lock`` in its
output folder while it writes there. The operating system releases the lock when the process ends however it
ends (``kill -9`` included), so a killed run never leaves the folder locked; the file itself stays and holds
the process id of the last run, for the message a second run prints.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from gradcam.batch.errors import JobError
from gradcam.batch.layout import OutputLayout


class FolderLock:
    """The exclusive lock on an output folder, held inside a ``with`` block.

    Raises
    ------
    JobError
        On entry, when another process holds the lock (one line naming its process id), or when the lock
        file cannot be created (the folder is not writable, or ``gradcam.lock`` is a link or a folder).
    """

    def __init__(self, folder: Path) -> None:
        self.path = OutputLayout(folder).lock
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            # O_NOFOLLOW: a link planted at the lock's name must not lead the pid into another file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise JobError(f"cannot create the lock file {self.path} ({error.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise JobError(
                f"another gradcam run (process {holder}) is writing into {self.path.parent}; wait for it to "
                "end, or choose another --output-dir"
            ) from None
        except OSError as error:
            os.close(fd)
            raise JobError(f"cannot lock {self.path} ({error.strerror})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
