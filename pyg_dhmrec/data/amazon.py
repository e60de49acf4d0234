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
import os
import re
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


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a (gzipped) text file; a cut or corrupt file is an error
    naming it, not an EOFError."""
    number = 0
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                yield number, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(
            f"{path}: truncated or corrupt gzip data after line {number} ({e}); delete it to "
            "download it again"
        ) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}:{number + 1}: not UTF-8 text ({e.reason})") from None


def read_review_table(path: str | os.PathLike) -> Reviews:
    """Read a (gzipped) JSON-lines review file; a malformed line is an error naming its number."""
    path = Path(path)
    users, items, ratings, times, numbers = [], [], [], [], []
    lacking: dict[str, int] = {}  # field -> first line without it
    for number, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            user, item = str(row["reviewerID"]), str(row["asin"])
        except (json.JSONDecodeError, TypeError) as e:
            raise DataFormatError(f"{path}:{number}: not a JSON object ({e})") from None
        except KeyError as e:
            raise DataFormatError(f"{path}:{number}: review lacks field {e}") from None
        users.append(user)
        items.append(item)
        numbers.append(number)
        for field in ("overall", "unixReviewTime"):
            if field not in row:
                lacking.setdefault(field, number)
        ratings.append(row.get("overall", 0.0))
        times.append(row.get("unixReviewTime", 0))
    if not users:
        raise DataFormatError(f"{path}: no reviews")
    for field, number in lacking.items():  # the column is left out, not filled in
        log.warning(
            "%s:%d: review lacks '%s' (the first line without it): the dataset's .inter gets "
            "no %s column",
            path,
            number,
            field,
            "rating" if field == "overall" else "timestamp",
        )
    rating = _numeric_column(path, "overall", ratings, numbers, np.float64)
    stamp = _numeric_column(path, "unixReviewTime", times, numbers, np.int64)
    rating = None if "overall" in lacking else rating
    stamp = None if "unixReviewTime" in lacking else stamp
    return Reviews(np.asarray(users), np.asarray(items), rating, stamp)


def _numeric_column(
    path: Path, field: str, values: list, numbers: list[int], dtype: type
) -> np.ndarray:
    """``values`` as ``dtype``; an error naming the first line whose value does not fit."""
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        for value, number in zip(values, numbers):
            try:
                np.asarray([value], dtype=dtype)
            except (TypeError, ValueError, OverflowError) as e:
                raise DataFormatError(
                    f"{path}:{number}: '{field}' must be a number in {np.dtype(dtype).name}'s "
                    f"range, got {value!r} ({e})"
                ) from None
        raise


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
                if item is not None and not found[item]:  # first record of an asin wins
                    out[item] = records["x"][index]
                    found[item] = True
            carry = buffer[n * record :]  # a record split across reads waits for the next one
            offset += n * record
    if carry:
        raise DataFormatError(
            f"{path}: {len(carry)} trailing byte(s) after the last full record of "
            f"{record} bytes: the file is truncated or its records are not {dim}-d"
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
        value = ast.literal_eval(line)  # the 2014 metadata is Python dict literals
    except (ValueError, SyntaxError, TypeError):  # TypeError: an unhashable key, {[1]: 2}
        value = json.loads(line)  # some mirrors re-encode it as JSON
    if not isinstance(value, dict):
        raise ValueError(f"expected a dict, got {type(value).__name__}")
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = " ".join(_as_text(v) for v in value)
    return " ".join(str(value or "").split())  # collapse whitespace and newlines


def _item_text(row: Mapping[str, Any]) -> str:
    categories: list[str] = []
    for path in row.get("categories") or []:
        for category in path if isinstance(path, (list, tuple)) else [path]:
            category = _as_text(category)
            if category and category not in categories:
                categories.append(category)
    fields = {
        "title": _as_text(row.get("title")),
        "brand": _as_text(row.get("brand")),
        "categories": ", ".join(categories),
        "description": _as_text(row.get("description")),
    }
    return " ".join(
        f"{label}: {fields[key].rstrip('.')}." for label, key in _TEXT_FIELDS if fields[key]
    )


def item_texts(meta_path: str | os.PathLike, asin_to_item: Mapping[str, int]) -> list[str]:
    """One text per item id from its metadata (``""`` for an item without metadata).

    The text is :data:`TEXT_TEMPLATE` with its empty fields left out, e.g.
    ``"Title: Soft Blanket. Brand: Acme. Categories: Baby, Nursery. Description: Warm."``;
    categories are the category paths flattened, first occurrence kept.
    """
    meta_path = Path(meta_path)
    texts = [""] * len(asin_to_item)
    for number, line in _numbered_lines(meta_path):
        if not line.strip():
            continue
        quick = _ASIN_RE.search(line)
        if quick and quick.group(1) not in asin_to_item:
            continue  # skip parsing items outside the dataset (most of the file)
        try:
            row = _parse_meta_line(line)
        except (ValueError, SyntaxError) as e:
            raise DataFormatError(f"{meta_path}:{number}: not a metadata dict ({e})") from None
        item = asin_to_item.get(str(row.get("asin", "")))
        if item is not None and not texts[item]:
            texts[item] = _item_text(row)
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
    if encoder not in ("auto", "sentence-transformers", "tfidf"):
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
    missing = [key for key in RAW_KEYS if not urls.get(key)]
    if missing:
        raise ValueError(f"amazon dataset '{name}': no URL for {', '.join(missing)}")
    files = fetch_raw_files(
        folder, name, category, urls, expected or {}, mirror=mirror, progress=progress, log=log
    )

    table = read_review_table(files["reviews"])
    pair = np.char.add(np.char.add(table.reviewer_ids, "\t"), table.asins)
    _, first = np.unique(pair, return_index=True)
    first = np.sort(first)  # keep the first review of a (reviewer, asin) pair, in file order
    keep = first[k_core(table.reviewer_ids[first], table.asins[first], k)]
    if keep.size == 0:
        raise DataFormatError(f"{files['reviews']}: nothing is left after the {k}-core filter")
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
    _check_replaceable(folder, name, list(outputs))
    # The journal names what this build writes, so an interrupted build is known as ours.
    write_json(folder / JOURNAL_FILE, {"outputs": digests})
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
    return value


def _written_digests(folder: Path) -> dict[str, str | None]:
    """Output file -> sha256 of the version the Amazon build wrote (None: any version)."""
    owned: dict[str, str | None] = {}
    meta = _read_record(folder / META_FILE)
    if meta is not None and "outputs" not in meta:  # built before digests were recorded
        names = ("u_id_mapping.csv", "i_id_mapping.csv", "image_feat.npy", "text_feat.npy")
        owned.update(dict.fromkeys(names))
        owned.update({f: None for f in os.listdir(folder) if f.endswith(".inter")})
    for record in (meta, _read_record(folder / JOURNAL_FILE)):
        if record is not None:
            owned.update(record.get("outputs") or {})
    return owned


def _check_replaceable(folder: Path, name: str, files: Sequence[str]) -> None:
    """Refuse to overwrite a file of ``folder`` that the Amazon build did not write."""
    owned = _written_digests(folder)
    foreign = []
    for file in files:
        path = folder / file
        if path.exists() and not (file in owned and owned[file] in (None, _file_sha256(path))):
            foreign.append(str(path))
    if foreign:
        raise DataFormatError(
            f"dataset '{name}': the build would replace {', '.join(foreign)}, which the Amazon "
            "build did not write (their content is not the one recorded in meta.json or "
            f"{JOURNAL_FILE}); move them away, or place {name}.inter beside them to use the "
            "folder as it is"
        )


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
    if journal is not None and (journal.get("outputs") or {}).get(inter.name) == _file_sha256(
        inter
    ):
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
        if size == 0 or size % record:
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
