"""Atomic file writes: every file the library writes goes through a temporary file in the
target's folder, is flushed to disk and then renamed over the target with ``os.replace``.

A reader therefore sees either the previous complete file or the new complete one, never a
partial write, whatever moment the writing process is killed at. Files get mode 0644 (not
``mkstemp``'s 0600), so results and built datasets are readable by other users.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FILE_MODE",
    "atomic_write",
    "write_bytes",
    "write_json",
    "write_npy",
    "write_text",
    "write_torch",
    "torch_bytes",
    "sha256_bytes",
    "DamagedFile",
    "WriteFailed",
    "ensure_folder",
    "write_torch_checked",
    "read_torch_checked",
]

FILE_MODE = 0o644


def ensure_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create the folder ``path`` (and its parents) when missing. A file in its place, or a
    folder the system refuses to create, raises :class:`ValueError` naming ``what`` (e.g.
    ``output``) and the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: exists and is not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot create the folder ({e.strerror or e})") from None
    return path


class WriteFailed(OSError, ValueError):
    """A file the system refused to write (disk full, quota, read-only folder); the message
    names the file and says what is kept. An ``OSError`` for callers that
    tolerate failed writes (caches), a ``ValueError`` for the command line's ``error:``.

    ``advice`` replaces the default end (what is kept, what to do); ``path`` and ``error``
    (the system's) let a caller re-raise it with its own.
    """

    def __init__(self, path: Path, error: OSError, advice: str | None = None) -> None:
        self.path, self.error = Path(path), error
        self.reason = error.strerror or str(error)
        if advice is None:
            kept = "the previous file is kept" if self.path.is_file() else "nothing was written"
            advice = f"{kept}; {self.remedy}"
        super().__init__(error.errno, f"{path}: cannot be written ({self.reason}); {advice}")

    @property
    def remedy(self) -> str:
        """What to do about the system's refusal, in a few words."""
        code = self.error.errno
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return "make room on its file system"
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "make its folder writable"
        if code == errno.EISDIR:
            return f"move the folder {self.path} out of the way"
        return "fix the cause named"

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


def _os_error(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``: itself, or one it was raised from or while handling
    (``torch.save`` reports a failed write as a ``RuntimeError`` raised during the OSError)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then rename it to
    ``path``; the folder is created when missing. Returns ``path``.

    A write the system refuses (disk full, ...) raises :class:`WriteFailed` naming ``path``;
    the previous file is kept and the temporary removed. The file and then its folder are
    fsynced, so the new file survives a power loss once this returns."""
    path = Path(path)
    ensure_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteFailed(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(e) if isinstance(e, Exception) else None  # not a KeyboardInterrupt
        if cause is None or isinstance(e, WriteFailed):
            raise
        raise WriteFailed(path, cause) from None
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Put a rename in ``folder`` on disk: after a power loss the name points at the new file
    (the file's own fsync covers its data, not the folder entry)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some systems (Windows): the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself has happened
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """JSON with one-space indent; values JSON does not know are written as ``str``."""
    return write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def write_npy(path: str | os.PathLike, array: Any) -> Path:
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` into memory."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DamagedFile(ValueError):
    """A file that is not the expected kind, was cut short or changed after it was written."""


def _header(kind: str) -> bytes:
    return f"pyg_dhmrec {kind} sha256:".encode("ascii")


class _HashingWriter:
    """A write-only file that passes bytes on to ``file`` and hashes them on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.digest = file, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


class _Window(io.RawIOBase):
    """The part of a binary file from ``start`` on, as a seekable file of its own (so
    ``torch.load`` reads the body after the header without a copy in memory)."""

    def __init__(self, file: IO[bytes], start: int) -> None:
        super().__init__()
        self.file, self.start = file, start
        self.file.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            offset += self.start
        return self.file.seek(offset, whence) - self.start

    def tell(self) -> int:
        return self.file.tell() - self.start

    def readinto(self, buffer: Any) -> int:
        return self.file.readinto(buffer)


_BLOCK = 1 << 22  # bytes hashed per read


def write_torch_checked(path: str | os.PathLike, obj: Any, kind: str) -> Path:
    """``torch.save`` of ``obj`` behind a header line naming ``kind`` and the sha256 of the
    bytes that follow, atomically; :func:`read_torch_checked` verifies both.

    Streamed: the body is hashed while it is written and the header's checksum is filled in
    last, so no copy of the serialised object is held in memory (a processed dataset with
    gigabytes of features costs its own size, not three times it).
    """
    import torch

    header = _header(kind)

    def write(f: IO[bytes]) -> None:
        f.write(header + b"0" * 64 + b"\n")  # checksum placeholder, same length
        body = _HashingWriter(f)
        torch.save(obj, body)
        f.flush()
        f.seek(len(header))
        f.write(body.digest.hexdigest().encode("ascii"))
        f.seek(0, io.SEEK_END)

    return atomic_write(path, write)


def read_torch_checked(path: str | os.PathLike, kind: str) -> Any:
    """The object of a file written by :func:`write_torch_checked` for ``kind``.

    Raises :class:`DamagedFile` (message starting with the path) when the file cannot be read,
    lacks the header, fails the checksum (truncated, flipped bytes) or does not unpickle. The
    checksum is computed block by block and the object is loaded from the file itself, so
    memory holds the loaded object only.
    """
    import torch

    path = Path(path)
    header = _header(kind)
    end = len(header) + 64
    try:
        with open(path, "rb") as f:
            head = f.read(end + 1)
            if not head.startswith(header) or head[end : end + 1] != b"\n":
                raise DamagedFile(
                    f"{path}: not a {kind} file written by this version of pyg_dhmrec (it does "
                    f"not start with the header line {header.decode()}<sha256>)"
                )
            digest, size = hashlib.sha256(), 0
            for block in iter(lambda: f.read(_BLOCK), b""):
                digest.update(block)
                size += len(block)
            if digest.hexdigest() != head[len(header) : end].decode("ascii", "replace"):
                raise DamagedFile(
                    f"{path}: checksum mismatch: its {size} bytes after the header differ from "
                    "what was written (the file was cut short or altered)"
                )
            try:
                return torch.load(_Window(f, end + 1), map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001 (unpickling raises many kinds; checksum passed)
                raise DamagedFile(f"{path}: not readable ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise DamagedFile(f"{path}: cannot be read ({e.strerror or e})") from None
