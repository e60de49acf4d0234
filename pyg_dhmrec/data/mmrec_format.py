"""Readers for the MMRec dataset format, with validation that names file, line and field.

``<name>.inter`` is tab-separated with a header row holding at least ``userID``, ``itemID`` and
``x_label`` (0 train, 1 valid, 2 test); other columns (``rating``, ``timestamp``) are ignored.
Ids are 0-based and the counts are max id + 1. A feature file is a float ``.npy`` matrix with one
row per item id.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
SPLIT_NAMES = ("train", "valid", "test")
# Rows (max id + 1) allowed per distinct id, plus a slack: gaps are fine, sparse ids are not.
MAX_ID_SPREAD = 4
ID_SLACK = 1024
# Plain ASCII decimals only: Python's int() also takes '1_0', '+5', '\u0661', '\uff11'.
_INT_RE = re.compile(r"-?[0-9]+")
# Many ints joined by newlines, matched in one pass (a per-value loop is slow on big files).
_INT_LINES_RE = re.compile(r"-?[0-9]+(?:\n-?[0-9]+)*")
# Modality names become attribute, buffer and dict key names (data['item'].<m>, feat_<m>), and
# models join two with '__' into one key.
MODALITY_NAME_RE = re.compile(r"(?!.*__)[A-Za-z][A-Za-z0-9_]*")
MODALITY_NAME_RULE = (
    "a letter, then ASCII letters, digits or single underscores (e.g. image, text_v2)"
)
# Leading bytes of files that are not UTF-8 text: what each is, and what to do about it.
_NOT_TEXT = (
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it (gunzip)"),
    (b"BZh", "a bzip2-compressed file", "decompress it (bunzip2)"),
    (b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it (unxz)"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it (unzstd)"),
    (b"PK\x03\x04", "a zip archive", "unpack it"),
    (b"PK\x05\x06", "an empty zip archive", "unpack the right one"),
    (b"\x93NUMPY", "a .npy array", "give the interaction file"),
    (b"\xff\xfe", "UTF-16 or UTF-32 text (byte-order mark FF FE)", "save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text (byte-order mark FE FF)", "save it as UTF-8"),
)


class DataFormatError(ValueError):
    """A dataset file that does not follow the MMRec format."""


@dataclass
class Interactions:
    """Validated interactions of one dataset, one entry per distinct (user, item) pair."""

    user: np.ndarray  # int64 [E]
    item: np.ndarray  # int64 [E]
    split: np.ndarray  # int8 [E], 0 train / 1 valid / 2 test
    num_users: int
    num_items: int
    num_duplicates: int = 0
    num_dropped_cold_start: int = 0
    num_cold_start_users: int = 0

    def edges(self, split: str) -> np.ndarray:
        """The [2, E_split] (user, item) array of one split."""
        mask = self.split == SPLIT_NAMES.index(split)
        return np.stack([self.user[mask], self.item[mask]])


def _parse_int_column(values: list[str], field: str, path: Path, line_of: np.ndarray) -> np.ndarray:
    if not _INT_LINES_RE.fullmatch("\n".join(values)):
        for index, value in enumerate(values):
            if not _INT_RE.fullmatch(value):
                # files joined with cat keep each one's header row
                again = "; a second header row?" if value.lstrip("\ufeff") == field else ""
                raise DataFormatError(
                    f"{path}:{line_of[index]}: field '{field}' must be an integer, got "
                    f"{value!r} (plain ASCII digits 0-9{again})"
                )
    try:
        return np.asarray(values, dtype=np.int64)
    except (ValueError, OverflowError):  # all plain decimals: some value is beyond int64
        limit = np.iinfo(np.int64)
        at = next(i for i, v in enumerate(values) if not limit.min <= int(v) <= limit.max)
        raise DataFormatError(
            f"{path}:{line_of[at]}: field '{field}' holds {values[at]!r}, out of the int64 range"
        ) from None


def _check_contiguous(path: Path, field: str, ids: np.ndarray, line_of: np.ndarray) -> None:
    """Ids index embedding rows (max id + 1 of them): refuse ids far from 0..N-1."""
    largest = int(ids.max())
    distinct = int(np.unique(ids).size)
    if largest + 1 > MAX_ID_SPREAD * distinct + ID_SLACK:
        at = int(np.argmax(ids))
        raise DataFormatError(
            f"{path}:{line_of[at]}: field '{field}' holds id {largest}, but ids must be 0-based "
            f"and contiguous: there are {distinct} distinct ids, and the matrices would need "
            f"{largest + 1} rows (max id + 1); renumber the ids 0..{distinct - 1}"
        )


def _not_text_kind(head: bytes) -> tuple[str, str] | None:
    """``(what, advice)`` for a file starting with ``head`` whose signature says it is not
    UTF-8 text, else None."""
    for signature, kind, advice in _NOT_TEXT:
        if head.startswith(signature) and (signature != b"BZh" or head[3:4].isdigit()):
            return kind, advice
    return None


def _dangling_link_note(path: Path) -> str:
    """``' (a symbolic link to T, which does not exist)'`` for a dangling link, else ''."""
    if not path.is_symlink():
        return ""
    return f" (a symbolic link to {os.readlink(path)}, which does not exist)"


def _header_hint(header: list[str], missing: list[str]) -> str:
    """What is likely wrong with a header that lacks required columns."""
    if any(header) and all(_INT_RE.fullmatch(name) for name in header if name):
        return (
            " (the line holds numbers, not column names: the file must start with a header "
            "row, e.g. userID<TAB>itemID<TAB>x_label, in any column order)"
        )

    def key(name: str) -> str:
        return name.strip("\"' ").replace("_", "").replace(" ", "").lower()

    near = [
        f"'{name}' to {column}"
        for column in missing
        for name in header
        if key(name) == key(column) and name != column
    ]
    if near:
        return (
            f" (column names are exact and case-sensitive: rename {', '.join(near)}; columns "
            "are separated by tabs)"
        )
    return " (columns must be separated by tabs)"


def read_inter_file(path: Path) -> Interactions:
    """Read and validate an MMRec ``.inter`` file.

    Errors (naming file, line and field): missing or unreadable file, a compressed, binary or
    UTF-16 file (by its first bytes; a NUL byte anywhere), missing columns (with the exact name
    for a near spelling, or a note when the first line holds data), a required column named
    twice, rows with too few fields or with more non-empty fields than the header names,
    non-integer or negative ids, ``x_label`` outside {0, 1, 2}, no train interaction at all.
    Blank lines, leading ones included, hold no row; ASCII spaces around column names and ids
    are dropped.
    Duplicate (user, item) pairs are counted, reported and kept once (the first occurrence).
    Valid/test interactions of users without any train interaction are dropped, as MMRec does
    (``filter_out_cod_start_users``), and counted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: interaction file not found" + _dangling_link_note(path))
    try:
        with open(path, "rb") as f:
            kind = _not_text_kind(f.read(8))
        if kind:
            raise DataFormatError(
                f"{path}: {kind[0]}, not an interaction file ({kind[1]}); expected "
                f"tab-separated UTF-8 text with a header row naming {', '.join(REQUIRED_COLUMNS)}"
            )
        # utf-8-sig: spreadsheet exports start with a byte-order mark, not part of 'userID'
        # Universal newlines turn '\r\n' and a lone '\r' into '\n'; splitlines() would also
        # break at U+2028, '\x0c', '\x85' etc. inside a field and shift every line number.
        with open(path, encoding="utf-8-sig") as f:
            content = f.read()
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected a tab-separated "
            "text file"
        ) from None
    except PermissionError as e:
        raise DataFormatError(
            f"{path}: cannot read the interaction file ({e.strerror}); make it readable"
        ) from None
    nul = content.find("\x00")
    if nul >= 0:  # valid UTF-8, but no text column holds NUL: binary data or UTF-16 text
        raise DataFormatError(
            f"{path}:{content.count(chr(10), 0, nul) + 1}: a NUL byte; expected tab-separated "
            "UTF-8 text (a binary file, or UTF-16 text saved without a byte-order mark?)"
        )
    lines = content.split("\n")
    # Leading blank lines are skipped like the blank lines between rows (as pandas does).
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataFormatError(
            f"{path}: empty file; expected a tab-separated header row with columns "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    # ASCII spaces around a column name are dropped, as around the ids below.
    header = [name.strip(" ") for name in lines[first].split("\t")]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataFormatError(
            f"{path}:{first + 1}: header lacks column(s) {', '.join(missing)}; found "
            f"{header!r}{_header_hint(header, missing)}"
        )
    repeated = [c for c in REQUIRED_COLUMNS if header.count(c) > 1]
    if repeated:
        raise DataFormatError(
            f"{path}:{first + 1}: header names column(s) {', '.join(repeated)} more than once; "
            f"found {header!r}"
        )
    columns = [header.index(c) for c in REQUIRED_COLUMNS]
    width = max(columns) + 1

    rows, line_numbers = [], []
    for number, line in enumerate(lines[first + 1 :], start=first + 2):
        if not line.strip():
            continue  # a blank line holds no interaction
        fields = line.split("\t")
        if len(fields) < width:
            raise DataFormatError(
                f"{path}:{number}: expected at least {width} tab-separated fields "
                f"({', '.join(header)}), got {len(fields)}: {line!r}"
            )
        if len(fields) > len(header) and any(f.strip() for f in fields[len(header) :]):
            raise DataFormatError(
                f"{path}:{number}: {len(fields)} tab-separated fields, but the header names "
                f"{len(header)} ({', '.join(header)}): {line!r}"
            )
        # ASCII spaces only: str.strip() would also drop e.g. '\xa0' around an id unseen.
        rows.append([fields[c].strip(" ") for c in columns])
        line_numbers.append(number)
    if not rows:
        raise DataFormatError(f"{path}: header only, no interactions")

    table = list(zip(*rows))
    line_of = np.asarray(line_numbers)
    parsed = {
        field: _parse_int_column(list(values), field, path, line_of)
        for field, values in zip(REQUIRED_COLUMNS, table)
    }
    user, item, label = parsed["userID"], parsed["itemID"], parsed["x_label"]

    for field, column in (("userID", user), ("itemID", item)):
        bad = np.flatnonzero(column < 0)
        if bad.size:
            raise DataFormatError(
                f"{path}:{line_of[bad[0]]}: field '{field}' must be a non-negative id, "
                f"got {column[bad[0]]} ({bad.size} negative value(s) in total)"
            )
    bad = np.flatnonzero((label < 0) | (label > 2))
    if bad.size:
        raise DataFormatError(
            f"{path}:{line_of[bad[0]]}: field 'x_label' must be 0 (train), 1 (valid) or 2 (test), "
            f"got {label[bad[0]]} ({bad.size} such row(s))"
        )

    for field, column in (("userID", user), ("itemID", item)):
        _check_contiguous(path, field, column, line_of)
    num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
    key = user * num_items + item
    distinct, first = np.unique(key, return_index=True)
    num_duplicates = len(key) - len(first)
    if num_duplicates:
        dropped = np.setdiff1d(np.arange(len(key)), first)
        # A pair listed in two splits (train and test, say) is worth its own line: which split
        # it lands in decides what is trained on and what is evaluated.
        kept_row = first[np.searchsorted(distinct, key[dropped])]
        clash = np.flatnonzero(label[dropped] != label[kept_row])
        clash_note = ""
        if clash.size:
            i, k = dropped[clash[0]], kept_row[clash[0]]
            clash_note = (
                f"; {clash.size} of them in another split than the row kept (e.g. line "
                f"{line_of[i]}: {SPLIT_NAMES[label[i]]}, kept as {SPLIT_NAMES[label[k]]} from "
                f"line {line_of[k]})"
            )
        log.warning(
            "%s: %d duplicate (userID, itemID) row(s) (e.g. line(s) %s); keeping the first of "
            "each%s",
            path,
            num_duplicates,
            ", ".join(str(line_of[i]) for i in dropped[:5]),
            clash_note,
        )
    keep = np.sort(first)
    user, item, label = user[keep], item[keep], label[keep].astype(np.int8)

    if not (label == 0).any():
        raise DataFormatError(f"{path}: no train interaction (x_label 0)")
    has_train = np.zeros(num_users, dtype=bool)
    has_train[user[label == 0]] = True
    cold = ~has_train[user]
    num_cold_users = int(np.unique(user[cold]).size)
    if cold.any():
        log.warning(
            "%s: dropped %d valid/test interaction(s) of %d user(s) without train interactions "
            "(MMRec filter_out_cod_start_users)",
            path,
            int(cold.sum()),
            num_cold_users,
        )
        user, item, label = user[~cold], item[~cold], label[~cold]

    return Interactions(
        user=user,
        item=item,
        split=label,
        num_users=num_users,
        num_items=num_items,
        num_duplicates=num_duplicates,
        num_dropped_cold_start=int(cold.sum()),
        num_cold_start_users=num_cold_users,
    )


def _check_npy_size(path: Path) -> None:
    """Refuse a ``.npy`` whose data does not have the size its header declares, before numpy
    tries to allocate it (a damaged header can ask for terabytes; numpy ignores extra bytes)."""
    with open(path, "rb") as f:
        if f.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            return  # not .npy (a .npz, say): np.load tells which
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            return  # np.load names the versions it reads
        # Version 3 differs from 2 only in the header's text encoding (utf-8, for field names).
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(f)
        offset = f.tell()
    size = path.stat().st_size
    if dtype.hasobject:  # refused before np.load, whose message suggests allow_pickle
        raise DataFormatError(
            f"{path}: not a readable .npy array (it holds Python objects, dtype {dtype}, "
            "which need allow_pickle, and unpickling can run code: they are not loaded); "
            "expected a float matrix saved with numpy.save"
        )
    if any(d < 0 for d in shape):
        raise DataFormatError(
            f"{path}: the .npy header declares shape {shape}, with a negative dimension; the "
            "file is damaged"
        )
    need = math.prod(shape) * dtype.itemsize
    if offset + need != size:
        raise DataFormatError(
            f"{path}: the .npy header declares shape {shape} of {dtype} ({need} bytes of data), "
            f"but the file holds {size} bytes ({size - offset} after the header); the file is "
            f"{'truncated' if offset + need > size else 'longer than its data'} or its header "
            "damaged"
        )


def _npy_impostor(head: bytes) -> str:
    """What a feature file that lacks the .npy signature starts with, for the message."""
    if head[:1] == b"\x80":  # pickle protocol 2 and later
        return "a Python pickle (unpickling can run code, so it is not loaded)"
    kind = _not_text_kind(head)
    if kind:
        return kind[0]
    return f"it starts with {head!r}"


def read_feature_file(path: Path, num_items: int, modality: str) -> np.ndarray:
    """Load a modality's ``.npy`` matrix as float32 and check it holds one finite row per item."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(
            f"{path}: feature file of modality '{modality}' not found" + _dangling_link_note(path)
        )
    expected = f"save the matrix of modality '{modality}' with numpy.save"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        # np.load reads any file without the .npy magic as a pickle and says so: a text or
        # compressed file would be called "pickled data", with advice to allow pickles.
        if not head:
            raise DataFormatError(
                f"{path}: not a readable .npy array: empty file (0 bytes); {expected}"
            )
        if not head.startswith((np.lib.format.MAGIC_PREFIX, b"PK\x03\x04")):  # .npz: below
            raise DataFormatError(
                f"{path}: not a readable .npy array (no {np.lib.format.MAGIC_PREFIX!r} "
                f"signature): {_npy_impostor(head)}; {expected}"
            )
        _check_npy_size(path)
        array = np.load(path, allow_pickle=False)
    except DataFormatError:
        raise
    except PermissionError as e:
        raise DataFormatError(
            f"{path}: cannot read the feature file of modality '{modality}' ({e.strerror}); "
            "make it readable"
        ) from None
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(f"{path}: not a readable .npy array ({e})") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        names = ", ".join(array.files)
        array.close()
        raise DataFormatError(
            f"{path}: a .npz archive (arrays {names}), not a .npy array; save the matrix of "
            f"modality '{modality}' with numpy.save"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DataFormatError(
            f"{path}: modality '{modality}' must hold floating-point features, "
            f"got dtype {array.dtype}"
        )
    if array.ndim != 2:
        raise DataFormatError(
            f"{path}: modality '{modality}' must be a 2-D matrix [num_items, dim], "
            f"got shape {array.shape}"
        )
    if array.shape[1] == 0:
        raise DataFormatError(
            f"{path}: modality '{modality}' has 0 feature columns (shape {array.shape}); "
            "expected at least one"
        )
    if array.shape[0] != num_items:
        raise DataFormatError(
            f"{path}: modality '{modality}' has {array.shape[0]} rows, expected one per item: "
            f"{num_items} (max itemID + 1 in the interaction file)"
        )
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataFormatError(
            f"{path}: modality '{modality}' has NaN or inf in {bad.size} row(s), first at item "
            f"(row) {bad[0]}"
        )
    if array.dtype == np.float32 or array.dtype.itemsize < 4:  # float16: exact in float32
        features = np.ascontiguousarray(array, dtype=np.float32)
    else:
        features = _to_float32(path, modality, array)
    zero = np.flatnonzero(~features.any(axis=1))
    if zero.size:  # legal (an item without an image), but cosine 0 to every item: say so
        log.warning(
            "%s: modality '%s' has %d all-zero row(s) of %d, first at item (row) %d: these "
            "items have no features (cosine 0 to every item in kNN graphs)",
            path,
            modality,
            zero.size,
            features.shape[0],
            zero[0],
        )
    return features


def _to_float32(path: Path, modality: str, array: np.ndarray) -> np.ndarray:
    """``array`` (finite, wider than float32) as float32, refusing values the cast would turn
    into inf, and rows of nonzero values it would turn into all zeros."""
    with np.errstate(over="ignore", under="ignore"):
        features = np.ascontiguousarray(array, dtype=np.float32)
    overflow = ~np.isfinite(features)
    if overflow.any():
        rows = np.flatnonzero(overflow.any(axis=1))
        raise DataFormatError(
            f"{path}: modality '{modality}' ({array.dtype}) has {int(overflow.sum())} value(s) "
            f"beyond float32's range (|x| > {float(np.finfo(np.float32).max):.4g}), which would "
            f"become inf when stored as float32, in {rows.size} row(s), first at item (row) "
            f"{rows[0]} (value {float(array[rows[0]][overflow[rows[0]]][0]):.4g}); rescale "
            "the features"
        )
    flushed = (array != 0) & (features == 0)
    if flushed.any():
        # Partly flushed rows keep a direction; an all-zero row loses the item's features.
        lost = np.flatnonzero(flushed.any(axis=1) & ~features.any(axis=1))
        if lost.size:
            raise DataFormatError(
                f"{path}: modality '{modality}' ({array.dtype}) has {int(flushed.sum())} "
                "nonzero value(s) too small for float32 (|x| below about 1.4e-45), which "
                f"become 0 when stored as float32; {lost.size} item row(s) would become "
                f"all zeros, first at item (row) {lost[0]}; rescale the features"
            )
    return features
