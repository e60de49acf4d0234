"""Build an MMRec-format Amazon dataset from the raw 2014 release (He & McAuley).

Pipeline of :func:`build_amazon_dataset` (the preprocessing of MMRec's Baby/Sports/Clothing):

1. download ``reviews_<Category>_5.json.gz`` (5-core reviews), ``meta_<Category>.json.gz``
   (product metadata) and ``image_features_<Category>.b`` (4096-d CNN image features) into
   ``<folder>/raw/`` (resumable, verified: :func:`~pyg_dhmrec.data.download.download_file`);
2. read the reviews, keep the first review of each (reviewer, asin) pair, filter to the
   ``k``-core (iterated to a fixed point), and map reviewers and asins to 0-based ids in sorted
   order (``u_id_mapping.csv``, ``i_id_mapping.csv``);
3. split each user's interactions with :func:`~pyg_dhmrec.data.split.split_per_user` (seeded)
   and write ``<name>.inter`` (``userID itemID rating timestamp x_label``);
4. ``image_feat.npy``: the image features of the dataset's items, items without one get the
   mean of those found (as MMRec does);
5. ``text_feat.npy``: the text of :func:`item_texts` encoded by :func:`encode_texts`;
6. ``meta.json`` (sources, md5s, settings, counts). It is removed first and written last, so
   a folder holding it is a finished build.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyg_dhmrec.atomic_files import sha256_bytes, write_bytes, write_json
from pyg_dhmrec.data.download import DownloadError, download_file, file_md5, gzip_complete
from pyg_dhmrec.data.mmrec_format import DataFormatError
from pyg_dhmrec.data.split import split_per_user

log = logging.getLogger(__name__)
_logger = log  # for functions whose ``log`` argument hides the module logger

__all__ = [
    "AMAZON_BUILD_VERSION",
    "IMAGE_DIM",
    "TEXT_TEMPLATE",
    "Reviews",
    "build_amazon_dataset",
    "encode_texts",
    "item_texts",
    "k_core",
    "read_image_features",
    "read_review_table",
    "read_reviews",
]

AMAZON_BUILD_VERSION = 1  # bump when the built files change for the same inputs
IMAGE_DIM = 4096
ASIN_BYTES = 10
META_FILE = "meta.json"
JOURNAL_FILE = ".build.json"  # outputs of a build in progress, by sha256
RAW_MANIFEST = "manifest.json"  # in raw/: size and md5 of each file as downloaded
RAW_KEYS = ("reviews", "meta", "image")
SENTENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_ENCODERS = ("auto", "sentence-transformers", "tfidf")
RAW_KEY_EXAMPLES = {
    "reviews": "reviews_<Category>_5.json.gz",
    "meta": "meta_<Category>.json.gz",
    "image": "image_features_<Category>.b",
}
# Item text: these fields in this order, empty ones left out (MMRec uses the same fields).
TEXT_TEMPLATE = (
    "Title: {title}. Brand: {brand}. Categories: {categories}. Description: {description}."
)
_TEXT_FIELDS = (
    ("Title", "title"),
    ("Brand", "brand"),
    ("Categories", "categories"),
    ("Description", "description"),
)
_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


@dataclass
class Reviews:
    """One row per review line: reviewer, asin and, where every line has them, rating and time."""

    reviewer_ids: np.ndarray  # str
    asins: np.ndarray  # str
    ratings: np.ndarray | None  # float64, None when a line lacks 'overall'
    timestamps: np.ndarray | None  # int64, None when a line lacks 'unixReviewTime'
    lines: np.ndarray | None = None  # int64: the file line of each row, for messages


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # by content: a gzip saved without .gz is still one
    raw = gzip.open(path, "rb") if gzipped or path.suffix == ".gz" else open(path, "rb")
    # surrogateescape: a bad byte is found on its own line below, not where the decoder read ahead
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a non-UTF-8 byte


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a (gzipped) text file; a cut or corrupt file is an error
    naming it, not an EOFError, and a non-UTF-8 byte an error naming its line."""
    number = 0
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if bad := _UNDECODABLE.search(line):
                    raise DataFormatError(
                        f"{path}:{number}: not UTF-8 text (an undecodable byte at character "
                        f"{bad.start() + 1}); expected UTF-8 encoded lines"
                    )
                if number == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark is no content
                yield number, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(
            f"{path}: truncated or corrupt gzip data after line {number} ({e}); delete it to "
            "download it again"
        ) from None


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number"}
_JSON_KINDS.update({bool: "a boolean", type(None): "null"})
_BAD_ID_CHARS = re.compile(r"[\t\n\r\x00-\x1f]")  # would break the tab-separated id mappings


def _review_id(path: Path, number: int, row: Mapping[str, Any], field: str) -> str:
    value = row[field]
    if not isinstance(value, str) or not value.strip() or _BAD_ID_CHARS.search(value):
        raise DataFormatError(
            f"{path}:{number}: review field '{field}' must be a non-empty string without tabs, "
            f"line breaks or control characters, got {value!r} ({type(value).__name__})"
        )
    return value


def _review_number(path: Path, number: int, field: str, value: Any) -> float | int:
    """A rating (finite number) or a time (non-negative whole seconds, int64), else an error."""
    # a JSON integer may exceed float's range: only a float can be nan or infinite
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok or (isinstance(value, float) and math.isfinite(value))
    if field == "overall":
        if ok:
            return float(value)
        expected = "a number (a finite rating)"
    else:
        if ok and value >= 0 and value == int(value) and int(value) < 2**63:
            return int(value)
        expected = "a number of seconds since 1970 (a whole number >= 0 in int64's range)"
    raise DataFormatError(
        f"{path}:{number}: '{field}' must be {expected}, got {value!r} ({type(value).__name__})"
    )


def read_review_table(path: str | os.PathLike) -> Reviews:
    """Read a (gzipped) JSON-lines review file; a malformed line is an error naming its number,
    its field and what was expected."""
    path = Path(path)
    users, items, ratings, times, numbers = [], [], [], [], []
    lacking: dict[str, int] = {}  # field -> first line without it
    for number, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:  # Recursion: nested thousands deep
            raise DataFormatError(f"{path}:{number}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise DataFormatError(
                f"{path}:{number}: not a JSON object (expected one review object per line, got "
                f"{_JSON_KINDS.get(type(row), type(row).__name__)} {line.strip()[:80]!r})"
            )
        try:
            user = _review_id(path, number, row, "reviewerID")
            item = _review_id(path, number, row, "asin")
        except KeyError as e:
            raise DataFormatError(f"{path}:{number}: review lacks field {e}") from None
        users.append(user)
        items.append(item)
        numbers.append(number)
        for field, column, default in (("overall", ratings, 0.0), ("unixReviewTime", times, 0)):
            if field in row:
                column.append(_review_number(path, number, field, row[field]))
            else:
                lacking.setdefault(field, number)
                column.append(default)
    if not users:
        raise DataFormatError(f"{path}: no reviews (expected one JSON review object per line)")
    for field, number in lacking.items():  # the column is left out, not filled in
        log.warning(
            "%s:%d: review lacks '%s' (the first line without it): the dataset's .inter gets "
            "no %s column",
            path,
            number,
            field,
            "rating" if field == "overall" else "timestamp",
        )
    rating = None if "overall" in lacking else np.asarray(ratings, dtype=np.float64)
    stamp = None if "unixReviewTime" in lacking else np.asarray(times, dtype=np.int64)
    lines = np.asarray(numbers, dtype=np.int64)
    _warn_unusual_reviews(path, rating, stamp, lines)
    return Reviews(np.asarray(users), np.asarray(items), rating, stamp, lines)


#: Amazon's star scale; the rating column is copied into the .inter file, never trained on.
RATING_SCALE = (1.0, 5.0)


def _warn_unusual_reviews(
    path: Path, rating: np.ndarray | None, stamp: np.ndarray | None, lines: np.ndarray
) -> None:
    """Warn (first line and count) about ratings off Amazon's 1-5 stars and review times
    after today: both are written through unchanged, as read."""
    low, high = RATING_SCALE
    checks = []
    if rating is not None:
        checks.append(
            (rating, (rating < low) | (rating > high), f"'overall' outside {low:g}-{high:g}")
        )
    if stamp is not None:
        # a day's slack: the file may come from another time zone's today
        now = int(time.time()) + 86_400
        checks.append((stamp, stamp > now, "'unixReviewTime' after today"))
    for values, odd, what in checks:
        if odd.any():
            first = int(np.flatnonzero(odd)[0])
            log.warning(
                "%s:%d: %d review(s) with %s (this one: %s); written to the .inter file as read",
                path,
                int(lines[first]),
                int(odd.sum()),
                what,
                values[first].item(),
            )


def read_reviews(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(reviewer_ids, asins)`` of every review of a (gzipped) JSON-lines review file."""
    table = read_review_table(path)
    return table.reviewer_ids, table.asins


def k_core(user: np.ndarray, item: np.ndarray, k: int = 5) -> np.ndarray:
    """Mask of the interactions in the ``k``-core: every user and item keeps >= ``k`` of them.

    Removing a sparse user can make an item sparse and vice versa, so the filter is repeated
    until nothing changes (the fixed point is the largest such subgraph).
    """
    user = np.unique(np.asarray(user), return_inverse=True)[1].reshape(-1)
    item = np.unique(np.asarray(item), return_inverse=True)[1].reshape(-1)
    if user.shape != item.shape:
        raise ValueError(f"user and item must be aligned, got {user.shape} and {item.shape}")
    mask = np.ones(user.size, dtype=bool)
    n_users, n_items = int(user.max(initial=-1)) + 1, int(item.max(initial=-1)) + 1
    while True:
        user_count = np.bincount(user[mask], minlength=n_users)
        item_count = np.bincount(item[mask], minlength=n_items)
        keep = mask & (user_count[user] >= k) & (item_count[item] >= k)
        if np.array_equal(keep, mask):
            return mask
        mask = keep


def _scan_image_features(
    path: Path, asin_to_item: Mapping[str, int], dim: int, buffer_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features of the dataset's items (zeros where absent) and the mask of items found."""
    record = ASIN_BYTES + 4 * dim
    layout = np.dtype([("asin", f"S{ASIN_BYTES}"), ("x", "<f4", (dim,))])
    out = np.zeros((len(asin_to_item), dim), dtype=np.float32)
    found = np.zeros(len(asin_to_item), dtype=bool)
    carry = b""
    offset = 0  # file offset of carry's first byte, for error messages
    duplicates, first_duplicate = 0, None
    with open(path, "rb") as f:
        while block := f.read(buffer_bytes):
            buffer = carry + block
            n = len(buffer) // record
            records = np.frombuffer(buffer, dtype=layout, count=n)
            for index, raw in enumerate(records["asin"]):
                try:
                    asin = raw.decode("ascii").strip()
                except UnicodeDecodeError:
                    raise DataFormatError(
                        f"{path}: byte {offset + index * record}: asin {raw!r} is not ASCII "
                        f"(expected records of a {ASIN_BYTES}-byte asin + {dim} float32)"
                    ) from None
                item = asin_to_item.get(asin)
                if item is None:
                    continue
                at = offset + index * record
                if found[item]:  # first record of an asin wins; the others are counted
                    duplicates += 1
                    first_duplicate = first_duplicate or (at, asin)
                    continue
                vector = records["x"][index]
                if not np.isfinite(vector).all():  # would poison the row and the mean fill
                    bad = int(np.flatnonzero(~np.isfinite(vector))[0])
                    raise DataFormatError(
                        f"{path}: byte {at}: the record of asin {asin} has {vector[bad]} at "
                        f"feature {bad} (expected {dim} finite float32)"
                    )
                out[item] = vector
                found[item] = True
            carry = buffer[n * record :]  # a record split across reads waits for the next one
            offset += n * record
    if carry:
        raise DataFormatError(
            f"{path}: {len(carry)} trailing byte(s) after the last full record of "
            f"{record} bytes: the file is truncated or its records are not {dim}-d"
        )
    if duplicates:
        at, asin = first_duplicate
        _logger.warning(
            "%s: %d record(s) repeat an asin already read and were skipped (the first record "
            "of an asin is kept); the first such record is at byte %d (asin %s)",
            path,
            duplicates,
            at,
            asin,
        )
    return out, found


def read_image_features(
    path: str | os.PathLike,
    asin_to_item: Mapping[str, int],
    dim: int = IMAGE_DIM,
    buffer_bytes: int = 1 << 24,
    log: Callable[[str], Any] | None = print,
) -> np.ndarray:
    """Stream a ``.b`` image-feature file into ``[num_items, dim]`` float32 rows by item id.

    Records are a 10-byte ASCII asin then ``dim`` little-endian float32. The file is read
    ``buffer_bytes`` at a time (any size; records may straddle reads); asins outside
    ``asin_to_item`` are skipped; items without a record get the mean of the rows found.
    """
    path = Path(path)
    features, found = _scan_image_features(path, asin_to_item, dim, buffer_bytes)
    return _fill_missing(path, features, found, log)


def _fill_missing(
    path: Path, features: np.ndarray, found: np.ndarray, log: Callable[[str], Any] | None
) -> np.ndarray:
    if not found.any():
        raise DataFormatError(f"{path}: none of the {found.size} items has an image feature")
    missing = int((~found).sum())
    if missing:
        features[~found] = features[found].mean(axis=0)  # MMRec fills with the mean vector
    if log is not None:
        log(f"{path.name}: {found.sum()} items with an image, {missing} filled with the mean")
    return features


def _parse_meta_line(line: str) -> dict[str, Any]:
    try:
        try:
            value = ast.literal_eval(line)  # the 2014 metadata is Python dict literals
        except (ValueError, SyntaxError, TypeError) as e:  # TypeError: unhashable key, {[1]: 2}
            literal_error = e
            try:
                value = json.loads(line)  # some mirrors re-encode it as JSON
            except ValueError as e:
                raise ValueError(
                    f"neither a Python dict literal ({type(literal_error).__name__}: "
                    f"{literal_error}) nor a JSON object ({e})"
                ) from None
    except RecursionError:  # a value nested thousands deep
        raise ValueError("values nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a dict, got {type(value).__name__}")
    return value


class _FieldError(ValueError):
    """A metadata field of the wrong type; the reader adds the file and line."""


def _as_text(value: Any, field: str) -> str:
    """A text field: a string, a list of strings (joined) or absent (None)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (_as_text(v, field) for v in value) if t)
    if not isinstance(value, str):  # a number or a mapping is no text: not guessed at
        raise _FieldError(
            f"metadata field '{field}' must be a string or a list of strings, got {value!r} "
            f"({type(value).__name__})"
        )
    return " ".join(value.split())  # collapse whitespace and newlines


def _item_text(row: Mapping[str, Any]) -> str:
    paths = row.get("categories")
    if paths is not None and not isinstance(paths, (list, tuple)):  # a str would be split
        raise _FieldError(
            "metadata field 'categories' must be a list of category paths (lists of strings), "
            f"got {paths!r} ({type(paths).__name__})"
        )
    categories: list[str] = []
    for path in paths or []:
        for category in path if isinstance(path, (list, tuple)) else [path]:
            category = _as_text(category, "categories")
            if category and category not in categories:
                categories.append(category)
    fields = {
        "title": _as_text(row.get("title"), "title"),
        "brand": _as_text(row.get("brand"), "brand"),
        "categories": ", ".join(categories),
        "description": _as_text(row.get("description"), "description"),
    }
    return " ".join(
        f"{label}: {fields[key].rstrip('.')}." for label, key in _TEXT_FIELDS if fields[key]
    )


def item_texts(meta_path: str | os.PathLike, asin_to_item: Mapping[str, int]) -> list[str]:
    """One text per item id from its metadata (``""`` for an item without metadata).

    The text is :data:`TEXT_TEMPLATE` with its empty fields left out, e.g.
    ``"Title: Soft Blanket. Brand: Acme. Categories: Baby, Nursery. Description: Warm."``;
    categories are the category paths flattened, first occurrence kept. The first record of
    an asin is used; later ones are counted in a warning naming the first.
    """
    meta_path = Path(meta_path)
    texts = [""] * len(asin_to_item)
    seen = np.zeros(len(asin_to_item), dtype=bool)
    duplicates, first_duplicate = 0, 0
    for number, line in _numbered_lines(meta_path):
        if not line.strip():
            continue
        quick = _ASIN_RE.search(line)
        # skip parsing items outside the dataset (most of the file); an escaped asin is parsed
        if quick and "\\" not in quick.group(1) and quick.group(1) not in asin_to_item:
            continue
        try:
            row = _parse_meta_line(line)
        except (ValueError, SyntaxError) as e:
            raise DataFormatError(f"{meta_path}:{number}: not a metadata dict ({e})") from None
        asin = row.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DataFormatError(
                f"{meta_path}:{number}: metadata field 'asin' must be a non-empty string, got "
                + ("nothing (the field is missing)" if "asin" not in row else repr(asin))
            )
        item = asin_to_item.get(asin)
        if item is None:
            continue
        if seen[item]:
            duplicates += 1
            first_duplicate = first_duplicate or number
            continue
        seen[item] = True
        try:
            texts[item] = _item_text(row)
        except _FieldError as e:
            raise DataFormatError(f"{meta_path}:{number}: {e}") from None
    if duplicates:
        _logger.warning(
            "%s:%d: %d metadata record(s) repeat an asin already read and were skipped (the "
            "first record of an asin is kept); this is the first such line",
            meta_path,
            first_duplicate,
            duplicates,
        )
    return texts


def _sentence_transformer(texts: Sequence[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer  # optional dependency

    model = SentenceTransformer(SENTENCE_MODEL, local_files_only=True)  # offline only
    return np.asarray(model.encode(list(texts), batch_size=64), dtype=np.float32)


def _tfidf_svd(texts: Sequence[str], dim: int, seed: int) -> tuple[np.ndarray, str]:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        tfidf = TfidfVectorizer(sublinear_tf=True, dtype=np.float64).fit_transform(texts)
    except ValueError as e:  # empty vocabulary: no item has any word
        raise ValueError(f"tf-idf text encoder: no usable words in the item texts ({e})") from None
    rank = min(dim, tfidf.shape[0], tfidf.shape[1])
    svd = TruncatedSVD(n_components=rank, algorithm="randomized", n_iter=7, random_state=seed)
    reduced = svd.fit_transform(tfidf).astype(np.float32)
    name = f"tfidf+svd{rank}"
    if rank < dim:  # fewer words or items than dim: pad so every dataset has dim columns
        reduced = np.hstack([reduced, np.zeros((len(texts), dim - rank), dtype=np.float32)])
        name += f"+zero-pad{dim - rank}"
    return reduced, name


def encode_texts(
    texts: Sequence[str], encoder: str = "auto", dim: int = 384, seed: int = 2024
) -> tuple[np.ndarray, str]:
    """Encode item texts as ``[len(texts), dim]`` float32; return them and the encoder's name.

    ``sentence-transformers``: ``all-MiniLM-L6-v2`` (384-d, MMRec's choice), loaded offline;
    ``tfidf``: scikit-learn TfidfVectorizer + TruncatedSVD to ``dim`` (seeded, zero columns
    appended when the vocabulary or item count is below ``dim``, as the name then says);
    ``auto``: the former when its package and model are available, else the latter.
    """
    if encoder not in TEXT_ENCODERS:
        raise ValueError(
            f"unknown text encoder {encoder!r}; use auto, sentence-transformers or tfidf"
        )
    if encoder != "tfidf":
        try:
            return _sentence_transformer(texts), SENTENCE_MODEL
        except Exception as e:  # missing package, model not cached, ...: any reason to fall back
            if encoder == "sentence-transformers":
                raise RuntimeError(
                    f"text encoder sentence-transformers unavailable ({type(e).__name__}: {e}); "
                    f"pip install sentence-transformers and cache {SENTENCE_MODEL}, or use "
                    "text_encoder: tfidf"
                ) from None
    return _tfidf_svd(texts, dim, seed)


def _table(header: Sequence[str], columns: Sequence[Sequence[Any]]) -> str:
    lines = ["\t".join(header)]
    lines += ["\t".join(str(v) for v in row) for row in zip(*columns)]
    return "\n".join(lines) + "\n"


def _check_build_settings(
    name: str, urls: Mapping[str, str], seed: Any, k: Any, text_encoder: Any
) -> None:
    """Refuse settings that would fail (or be misread) only after the downloads."""
    where = f"amazon dataset '{name}'"
    missing = [key for key in RAW_KEYS if not urls.get(key)]
    if missing:
        raise ValueError(f"{where}: no URL for {', '.join(missing)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{where}: 'k_core' must be a whole number >= 1, got {k!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{where}: 'seed' must be a whole number >= 0, got {seed!r}")
    if text_encoder not in TEXT_ENCODERS:
        raise ValueError(
            f"{where}: unknown text encoder {text_encoder!r}; use {', '.join(TEXT_ENCODERS)}"
        )
    names: dict[str, str] = {}
    for key in RAW_KEYS:
        file = raw_file_name(str(urls[key]))
        if file in ("", ".", "..") or file == RAW_MANIFEST:
            raise ValueError(
                f"{where}: '{key}_url' {urls[key]!r} must end with the file's name (e.g. "
                f"{RAW_KEY_EXAMPLES[key]})"
            )
        if file in names:  # both would be saved as raw/<file>, one read as the other
            raise ValueError(
                f"{where}: '{names[file]}_url' and '{key}_url' name the same file {file!r}; "
                "each raw file needs its own name"
            )
        names[file] = key


def build_amazon_dataset(
    folder: str | os.PathLike,
    name: str,
    category: str,
    urls: Mapping[str, str],
    seed: int = 2024,
    k: int = 5,
    text_encoder: str = "auto",
    log: Callable[[str], Any] = print,
    progress: bool = True,
    expected: Mapping[str, Mapping[str, Any]] | None = None,
    mirror: str | None = None,
) -> None:
    """Download the raw files of ``category`` into ``<folder>/raw/`` and write the dataset.

    ``urls`` maps ``reviews``, ``meta`` and ``image`` to their URLs (fetched from
    ``<mirror>/<file name>`` when ``mirror`` is given); ``expected`` maps them to the
    ``size`` and ``md5`` each file must have, where known (:func:`fetch_raw_files`). Writes
    ``<name>.inter``, ``image_feat.npy``, ``text_feat.npy``, ``u_id_mapping.csv``,
    ``i_id_mapping.csv`` and, last, ``meta.json``. A file of the folder is only ever replaced
    when this function wrote it (its sha256 is recorded in ``meta.json`` or in the build
    journal ``.build.json``); anything else is an error naming the file.
    """
    folder = Path(folder)
    _check_build_settings(name, urls, seed, k, text_encoder)
    files = fetch_raw_files(
        folder, name, category, urls, expected or {}, mirror=mirror, progress=progress, log=log
    )

    table = read_review_table(files["reviews"])
    # ids hold no tab (read_review_table), so the pair key is unambiguous
    pair = np.char.add(np.char.add(table.reviewer_ids, "\t"), table.asins)
    _, first = np.unique(pair, return_index=True)
    first = np.sort(first)  # keep the first review of a (reviewer, asin) pair, in file order
    if first.size < len(pair):
        repeated = np.setdiff1d(np.arange(len(pair)), first)[0]
        line = table.lines[repeated] if table.lines is not None else repeated + 1
        _logger.warning(
            "%s:%d: %d review(s) repeat a (reviewerID, asin) pair already read and were skipped "
            "(the first review of a pair is kept); this is the first such line",
            files["reviews"],
            line,
            len(pair) - first.size,
        )
    keep = first[k_core(table.reviewer_ids[first], table.asins[first], k)]
    if keep.size == 0:
        raise DataFormatError(
            f"{files['reviews']}: nothing is left after the {k}-core filter (of "
            f"{len(np.unique(table.reviewer_ids))} reviewers and {len(np.unique(table.asins))} "
            f"items, none keeps {k} reviews whose items keep {k}); lower amazon.k_core or use a "
            "larger review file"
        )
    user_names, user = np.unique(table.reviewer_ids[keep], return_inverse=True)
    item_names, item = np.unique(table.asins[keep], return_inverse=True)
    user, item = user.reshape(-1).astype(np.int64), item.reshape(-1).astype(np.int64)
    label = split_per_user(user, len(user_names), seed)
    log(
        f"{name}: {len(table.asins)} reviews, {len(table.asins) - first.size} duplicate(s), "
        f"{keep.size} in the {k}-core: {len(user_names)} users, {len(item_names)} items"
    )
    asin_to_item = {asin: i for i, asin in enumerate(item_names.tolist())}

    texts = item_texts(files["meta"], asin_to_item)
    without_text = sum(not t for t in texts)
    if without_text == len(texts):  # the text modality would hold no information
        raise DataFormatError(
            f"{files['meta']}: none of the {len(texts)} items of the dataset has a metadata "
            "record with a title, brand, categories or description (expected one line per asin "
            f"of {files['reviews'].name}): is it the metadata of category {category}?"
        )
    log(f"{name}: {len(texts) - without_text} items with a text, {without_text} without metadata")
    text_feat, encoder_name = encode_texts(texts, text_encoder, seed=seed)
    log(f"{name}: text features {text_feat.shape} by {encoder_name}")
    image_feat, found = _scan_image_features(files["image"], asin_to_item, IMAGE_DIM, 1 << 24)
    image_feat = _fill_missing(files["image"], image_feat, found, log)

    order = np.lexsort((item, user))
    header, columns = ["userID", "itemID"], [user[order], item[order]]
    if table.ratings is not None:
        header.append("rating")
        columns.append(table.ratings[keep][order])
    if table.timestamps is not None:
        header.append("timestamp")
        columns.append(table.timestamps[keep][order])
    header.append("x_label")
    columns.append(label[order])
    # In writing order: the features before the .inter file, meta.json after everything.
    outputs = {
        "u_id_mapping.csv": _table(
            ["user_id", "userID"], [user_names.tolist(), range(len(user_names))]
        ).encode("utf-8"),
        "i_id_mapping.csv": _table(
            ["asin", "itemID"], [item_names.tolist(), range(len(item_names))]
        ).encode("utf-8"),
        "image_feat.npy": _npy_bytes(image_feat),
        "text_feat.npy": _npy_bytes(text_feat),
        f"{name}.inter": _table(header, columns).encode("utf-8"),
    }
    digests = {file: sha256_bytes(data) for file, data in outputs.items()}
    replaced = _check_replaceable(folder, name, list(outputs))
    # The journal names what this build writes and replaces, so an interrupted build is known
    # as ours whichever of the two versions each file holds.
    write_json(folder / JOURNAL_FILE, {"outputs": digests, "replaced": replaced})
    # An older build's meta.json would vouch for a mix of its files and ours if we are killed.
    (folder / META_FILE).unlink(missing_ok=True)
    for file, data in outputs.items():
        write_bytes(folder / file, data)

    counts = np.bincount(label, minlength=3)
    meta = {
        "source": "Amazon product data 2014 (He & McAuley), 5-core reviews",
        "builder_version": AMAZON_BUILD_VERSION,
        "category": category,
        "files": {
            key: {
                "url": urls[key],
                "file": f"raw/{path.name}",
                "size": path.stat().st_size,
                "md5": file_md5(path),
            }
            for key, path in files.items()
        },
        "settings": settings_of(category, urls, seed, k, text_encoder),
        "outputs": digests,
        "reviews": int(len(table.asins)),
        "duplicates_removed": int(len(table.asins) - first.size),
        "interactions": int(keep.size),
        "users": len(user_names),
        "items": len(item_names),
        "split": {"train": int(counts[0]), "valid": int(counts[1]), "test": int(counts[2])},
        "text_encoder": encoder_name,
        "text_dim": int(text_feat.shape[1]),
        "text_template": TEXT_TEMPLATE,
        "items_without_text": int(sum(not t for t in texts)),
        "image_dim": IMAGE_DIM,
        "items_without_image": int((~found).sum()),
    }
    write_json(folder / META_FILE, meta)  # last: the build is finished
    (folder / JOURNAL_FILE).unlink(missing_ok=True)
    log(f"{name}: built in {folder}")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    """A JSON file this module wrote (``meta.json``, the journal, the raw manifest), or None
    when absent; a damaged one is an error naming it."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataFormatError(
            f"{path}: not valid JSON ({e}); the Amazon build writes it and never edits it: delete "
            "the dataset folder to build it again"
        ) from None
    if not isinstance(value, dict):
        raise DataFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    for key in ("outputs", "replaced"):  # file -> sha256, read by the ownership checks
        record = value.get(key)
        if record is not None and not (
            isinstance(record, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in record.items())
        ):
            raise DataFormatError(
                f"{path}: key '{key}' must map file names to sha256 digests, got "
                f"{str(record)[:80]}; the Amazon build writes it and never edits it: delete the "
                "dataset folder to build it again"
            )
    return value


def _written_digests(folder: Path) -> dict[str, set[str] | None]:
    """Output file -> sha256s of the versions the Amazon build wrote (None: any version)."""
    owned: dict[str, set[str] | None] = {}
    meta = _read_record(folder / META_FILE)
    if meta is not None and "outputs" not in meta:  # built before digests were recorded
        names = ("u_id_mapping.csv", "i_id_mapping.csv", "image_feat.npy", "text_feat.npy")
        owned.update(dict.fromkeys(names))
        owned.update({f: None for f in os.listdir(folder) if f.endswith(".inter")})
    journal = _read_record(folder / JOURNAL_FILE) or {}
    for record in (meta or {}).get("outputs"), journal.get("outputs"), journal.get("replaced"):
        for file, digest in (record or {}).items():
            if owned.get(file, set()) is not None:
                owned.setdefault(file, set()).add(digest)
    return owned


def _check_replaceable(folder: Path, name: str, files: Sequence[str]) -> dict[str, str]:
    """Refuse to overwrite a file of ``folder`` that the Amazon build did not write; return
    the sha256 of each of ``files`` that exists (all the build's own)."""
    owned = _written_digests(folder)
    foreign, present = [], {}
    for file in files:
        path = folder / file
        if not path.exists():
            continue
        present[file] = _file_sha256(path)
        if not (file in owned and (owned[file] is None or present[file] in owned[file])):
            foreign.append(str(path))
    if foreign:
        raise DataFormatError(
            f"dataset '{name}': the build would replace {', '.join(foreign)}, which the Amazon "
            "build did not write (their content is not the one recorded in meta.json or "
            f"{JOURNAL_FILE}); move them away, or place {name}.inter beside them to use the "
            "folder as it is"
        )
    return present


def amazon_folder_state(folder: Path, name: str, settings: Mapping[str, Any]) -> str | None:
    """Why ``folder`` must be (re)built, or None when it is used as it is.

    A finished build (``meta.json``) is used when its settings match. Without ``meta.json``, a
    ``<name>.inter`` is somebody else's (MMRec's preprocessed files: used as they are, whether or
    not ``raw/`` exists) unless the build journal records it (an interrupted build).
    """
    folder = Path(folder)
    inter = folder / f"{name}.inter"
    meta = _read_record(folder / META_FILE)
    if meta is not None:
        if meta.get("settings") != dict(settings):
            return "it was built with other settings"
        return None if inter.is_file() else f"{inter.name} is missing"
    if not inter.is_file():
        return f"{inter.name} is missing"
    journal = _read_record(folder / JOURNAL_FILE)
    if journal is not None:
        ours = {
            (record or {}).get(inter.name)
            for record in (journal.get("outputs"), journal.get("replaced"))
        }
        if _file_sha256(inter) in ours:  # the new version or the one it was replacing
            return "its last build was interrupted"
    return None


# ----- raw files -----
def raw_file_name(url: str) -> str:
    return os.path.basename(url.split("?")[0])


def _expected_of(expected: Mapping[str, Any], recorded: Mapping[str, Any] | None) -> dict:
    """Size and md5 a raw file must have: the configured ones, else those recorded when this
    module downloaded it."""
    out = {k: expected.get(k) for k in ("size", "md5") if expected.get(k) is not None}
    return out or {k: v for k, v in (recorded or {}).items() if k in ("size", "md5")}


def raw_file_problem(path: Path, key: str, expected: Mapping[str, Any]) -> str | None:
    """What is wrong with the raw file ``path`` (None: it is complete)."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty"
    if expected.get("size") is not None and size != expected["size"]:
        return f"it has {size} bytes, expected {expected['size']}"
    if expected.get("md5") is not None:
        actual = file_md5(path)
        if actual != expected["md5"]:
            return f"its md5 {actual} differs from the expected {expected['md5']}"
        return None
    if path.suffix == ".gz" and not gzip_complete(path):
        return "its gzip data is truncated or corrupt"
    if key == "image":
        record = ASIN_BYTES + 4 * IMAGE_DIM
        if size % record:
            return f"its {size} bytes are not a whole number of {record}-byte records"
        if expected.get("size") is None:
            return "unverifiable"
    return None


def fetch_raw_files(
    folder: Path,
    name: str,
    category: str,
    urls: Mapping[str, str],
    expected: Mapping[str, Mapping[str, Any]],
    mirror: str | None = None,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> dict[str, Path]:
    """The verified raw files in ``<folder>/raw/``, downloading the missing and bad ones.

    Each file is checked against its configured ``size``/``md5`` (else those recorded in
    ``raw/manifest.json`` when it was downloaded; a gzip must decompress to its end and an
    image file hold whole records). A bad file is moved aside to ``<file>.corrupt`` (never
    deleted) and fetched again. All files that cannot be had are named in one error.
    """
    raw = Path(folder) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    manifest = _read_record(raw / RAW_MANIFEST) or {}
    files: dict[str, Path] = {}
    problems: list[str] = []
    for key in RAW_KEYS:
        file = raw_file_name(urls[key])
        path = raw / file
        want = _expected_of(expected.get(key) or {}, manifest.get(file))
        if path.exists():
            problem = raw_file_problem(path, key, want)
            if problem is None:
                files[key] = path
                continue
            if problem == "unverifiable":
                problems.append(
                    f"{path} was not downloaded by pyg_dhmrec and no {key}_size / {key}_md5 is "
                    "configured, so a copy cut between two records cannot be told from a "
                    f"complete one: set amazon.{key}_size (and {key}_md5) to the source's "
                    "values, or delete the file to download it"
                )
                continue
            aside = path.with_name(file + ".corrupt")
            os.replace(path, aside)  # kept, not deleted: it may be a copy placed by hand
            log(f"{path}: {problem}; moved to {aside.name}, fetching it again")
        source = f"{mirror.rstrip('/')}/{file}" if mirror else urls[key]
        try:
            download_file(
                source,
                path,
                md5=want.get("md5"),
                size=want.get("size"),
                progress=progress,
                require_length=key == "image",
            )
        except DownloadError as e:
            problems.append(str(e))
            continue
        problem = raw_file_problem(path, key, {**want, "size": path.stat().st_size})
        if problem is not None:  # e.g. a gzip the server cut cleanly
            aside = path.with_name(file + ".corrupt")
            os.replace(path, aside)
            problems.append(f"{path} as downloaded from {source}: {problem} (kept as {aside.name})")
            continue
        manifest[file] = {"url": source, "size": path.stat().st_size, "md5": file_md5(path)}
        write_json(raw / RAW_MANIFEST, manifest)
        files[key] = path
    if problems:
        raise DownloadError(
            f"dataset '{name}': {len(problems)} of the {len(RAW_KEYS)} raw Amazon files of "
            f"{category} cannot be used:\n  - "
            + "\n  - ".join(problems)
            + f"\nAlternatively place MMRec's preprocessed files ({name}.inter, image_feat.npy, "
            f"text_feat.npy) in {Path(folder).resolve()}/: such a folder is used as it is."
        )
    return files


def settings_of(
    category: str, urls: Mapping[str, str], seed: int, k: int, text_encoder: str
) -> dict[str, Any]:
    """The inputs that determine a build; a folder built with other settings is rebuilt."""
    return {
        "category": category,
        "urls": {key: urls[key] for key in ("reviews", "meta", "image")},
        "seed": seed,
        "k_core": k,
        "text_encoder": text_encoder,
        "builder_version": AMAZON_BUILD_VERSION,
    }
