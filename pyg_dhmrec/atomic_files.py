"""Atomic file writes: every file the library writes goes through a temporary file in the
target's folder, is flushed to disk and then renamed over the target with ``os.replace``.

A reader therefore sees either the previous complete file or the new complete one, never a
partial write, whatever moment the writing process is killed at. Files get mode 0644 (not
``mkstemp``'s 0600), so results and built datasets are readable by other users.
"""

from __future__ import annotations

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
    "write_torch_checked",
    "read_torch_checked",
]

FILE_MODE = 0o644


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then rename it to
    ``path``; the folder is created when missing. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def write_torch_checked(path: str | os.PathLike, obj: Any, kind: str) -> Path:
    """``torch.save`` of ``obj`` behind a header line naming ``kind`` and the sha256 of the
    bytes that follow, atomically; :func:`read_torch_checked` verifies both."""
    body = torch_bytes(obj)
    return write_bytes(path, _header(kind) + sha256_bytes(body).encode("ascii") + b"\n" + body)


def read_torch_checked(path: str | os.PathLike, kind: str) -> Any:
    """The object of a file written by :func:`write_torch_checked` for ``kind``.

    Raises :class:`DamagedFile` (message starting with the path) when the file cannot be read,
    lacks the header, fails the checksum (truncated, flipped bytes) or does not unpickle.
    """
    import torch

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DamagedFile(f"{path}: cannot be read ({e.strerror or e})") from None
    header = _header(kind)
    end = len(header) + 64
    if not raw.startswith(header) or raw[end : end + 1] != b"\n":
        raise DamagedFile(
            f"{path}: not a {kind} file written by this version of pyg_dhmrec (it does not "
            f"start with the header line {header.decode()}<sha256>)"
        )
    body = raw[end + 1 :]
    if sha256_bytes(body) != raw[len(header) : end].decode("ascii", "replace"):
        raise DamagedFile(
            f"{path}: checksum mismatch: its {len(body)} bytes after the header differ from "
            "what was written (the file was cut short or altered)"
        )
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 (unpickling raises many kinds; the checksum passed)
        raise DamagedFile(f"{path}: not readable ({type(e).__name__}: {e})") from None
