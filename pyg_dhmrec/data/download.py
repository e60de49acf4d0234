"""Resumable, verified file download over HTTP(S) with urllib only.

A file is written to ``<path>.part`` and renamed to ``<path>`` only once it is complete (length
and, for ``.gz`` files, a full decompression checked; md5 when given), so a file under its final
name is always a finished one. An interrupted ``.part`` is resumed with an HTTP ``Range``
request when the server supports it (answers 206) and restarted from zero otherwise (200).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

__all__ = ["DownloadError", "as_url", "download_file", "file_md5", "gzip_complete"]

_CHUNK = 1 << 20
_USER_AGENT = "pyg_dhmrec-downloader"


class DownloadError(OSError):
    """A file that could not be downloaded; the message says what to place where by hand."""


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def gzip_complete(path: Path) -> bool:
    """Whether a gzip file decompresses to its end (a truncated one raises EOFError)."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":  # an empty file would otherwise read as empty gzip
                return False
        with gzip.open(path, "rb") as f:
            while f.read(_CHUNK):
                pass
    except (EOFError, OSError, zlib.error):
        return False
    return True


def as_url(source: str) -> str:
    """``source`` as a URL: one with a scheme as it is, a local path as a ``file://`` URL."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        return source
    return Path(source).expanduser().resolve().as_uri()  # a local folder as mirror or file


def _failure(url: str, path: Path, reason: str) -> DownloadError:
    return DownloadError(
        f"download of {url} failed ({reason}); download that file by hand and save it as "
        f"{path.resolve()} (any {path.name}.part beside it may be deleted), then run again"
    )


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> int | None:
    """Append to (206) or rewrite (200) ``part``; return the expected total size if known."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range past the end: the .part is unusable, start over
            part.unlink()
            return _fetch(url, part, progress, timeout)
        raise
    with response:
        status = getattr(response, "status", None) or 200  # file:// answers have no status
        length = response.headers.get("Content-Length")
        mode = "ab"
        if status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:  # not the range we asked for
                raise http.client.HTTPException(f"unexpected Content-Range for offset {offset}")
            total = int(match.group(2)) if match.group(2) != "*" else None
            if total is None and length is not None:
                total = offset + int(length)
        else:
            offset, mode = 0, "wb"  # the server ignored the Range header: restart from zero
            total = int(length) if length is not None else None
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=part.name[: -len(".part")],
            disable=not progress,
        )
        with open(part, mode) as f, bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                f.write(block)
                bar.update(len(block))
    return total


def download_file(
    url: str,
    path: str | os.PathLike,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    size: int | None = None,
    require_length: bool = False,
) -> Path:
    """Download ``url`` to ``path`` and return ``path``.

    An existing ``path`` is kept (after an md5 check when ``md5`` is given). A truncated
    transfer (fewer bytes than ``Content-Length``, a gzip that does not read to its end, an md5
    mismatch, a size other than ``size``) is fetched once more, resuming a short ``.part`` with
    a ``Range`` request. With ``require_length``, a file whose length neither the server
    (Content-Length) nor ``size``/``md5`` tells is refused: a transfer cut between two records
    of a headerless format would look complete. Any network or HTTP failure raises
    :class:`DownloadError` naming the URL and the file to place.
    """
    path = Path(path)
    if path.exists() and (md5 is None or file_md5(path) == md5):
        return path
    url = as_url(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(path.suffix + ".part")
    problem = ""
    for _attempt in range(2):  # the first try (or resume), then one refetch
        try:
            total = _fetch(url, part, progress, timeout)
        except urllib.error.HTTPError as e:
            raise _failure(url, path, f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _failure(url, path, str(getattr(e, "reason", None) or e)) from None
        except ValueError as e:  # an unknown URL scheme, a malformed Content-Length
            raise _failure(url, path, str(e)) from None
        got = part.stat().st_size
        if total is None and size is not None:
            total = size
        if total is not None and got != total:
            problem = f"got {got} of {total} bytes"
            if got > total:  # cannot be resumed
                part.unlink()
            continue  # a short .part is resumed on the next attempt
        if size is not None and got != size:
            problem = f"the server's {got} bytes differ from the expected {size}"
            part.unlink()
            continue
        if require_length and total is None and md5 is None:
            part.unlink()
            raise _failure(
                url,
                path,
                "the server sent no Content-Length and no expected size or md5 is configured, "
                "so a cut transfer cannot be told from a complete one",
            )
        if path.suffix == ".gz" and not gzip_complete(part):
            problem = "the gzip data is truncated or corrupt"
            part.unlink()
            continue
        if md5 is not None and (actual := file_md5(part)) != md5:
            problem = f"md5 {actual} differs from the expected {md5}"
            part.unlink()
            continue
        os.replace(part, path)  # atomic: the final name only ever holds a complete file
        return path
    raise _failure(url, path, f"incomplete after a second attempt: {problem}")
