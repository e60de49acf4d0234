"""Input faults of the data layer found by fault probing: each gets an error naming the file,
line or field and what was expected, instead of a raw KeyError, a huge allocation, a silent
cast or a misread id."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pyg_dhmrec.config import discover_dataset
from pyg_dhmrec.data.dataset import MMRecDataset, SyntheticDataset
from pyg_dhmrec.data.mmrec_format import DataFormatError, read_feature_file, read_inter_file
from pyg_dhmrec.data.synthetic import SyntheticConfig

NAME = "toy"
HEADER = "userID\titemID\tx_label\n"
# 3 users, 4 items, every user with a train row.
ROWS = ["0\t0\t0", "0\t1\t0", "0\t2\t1", "1\t1\t0", "1\t3\t2", "2\t3\t0", "2\t0\t2"]
INTER = HEADER + "\n".join(ROWS) + "\n"
IMAGE = np.arange(12, dtype=np.float32).reshape(4, 3)


def _folder(root: Path, features: dict[str, np.ndarray] | None = None) -> Path:
    folder = root / NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{NAME}.inter").write_text(INTER, encoding="utf-8")
    for file, array in (features or {"image_feat.npy": IMAGE}).items():
        np.save(folder / file, array)
    return folder


def _write(folder: Path, text: str) -> Path:
    path = folder / "toy.inter"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- 1. modality names


@pytest.mark.parametrize(
    "file, modality, problem",
    [
        ("_feat.npy", "", "invalid name"),
        ("image.v2_feat.npy", "image.v2", "invalid name"),
        ("2d_feat.npy", "2d", "invalid name"),
        ("a__b_feat.npy", "a__b", "invalid name"),
        ("training_feat.npy", "training", "the name is reserved"),
        ("num_nodes_feat.npy", "num_nodes", "the name is reserved"),
        ("modalities_feat.npy", "modalities", "the name is reserved"),
        ("x_feat.npy", "x", "the name is reserved"),
        ("keys_feat.npy", "keys", "the name is reserved"),
    ],
)
def test_bad_modality_name_from_file_name(
    tmp_path: Path, file: str, modality: str, problem: str
) -> None:
    folder = _folder(tmp_path, {"image_feat.npy": IMAGE, file: IMAGE})
    settings = discover_dataset(folder)
    assert settings["modalities"][modality] == file
    where = f"dataset '{NAME}': modality {modality!r} (feature file {folder / file})"
    with pytest.raises(DataFormatError, match=re.escape(f"{where}: {problem}")) as err:
        MMRecDataset(str(tmp_path), NAME, **settings)
    if problem == "invalid name":
        assert "must be a letter, then ASCII letters, digits or single underscores" in str(
            err.value
        )
    assert not (folder / "processed").exists()  # refused before any processing


def test_bad_modality_name_in_mapping(tmp_path: Path) -> None:
    _folder(tmp_path)
    with pytest.raises(DataFormatError, match=r"modality '' \(feature file .*image_feat\.npy\)"):
        MMRecDataset(str(tmp_path), NAME, {"": "image_feat.npy"})


def test_valid_modality_names_load(tmp_path: Path) -> None:
    _folder(tmp_path, {"text_v2_feat.npy": IMAGE, "Image_feat.npy": IMAGE})
    ds = MMRecDataset(str(tmp_path), NAME, **discover_dataset(tmp_path / NAME))
    assert sorted(ds.modalities) == ["Image", "text_v2"]


def test_synthetic_reserved_modality_refused_before_generation(tmp_path: Path) -> None:
    settings = {"num_users": 10, "num_items": 10, "num_interactions": 50}
    with pytest.raises(
        DataFormatError, match=r"bad 'synthetic' settings: modality name\(s\) training are reserved"
    ):
        SyntheticDataset(str(tmp_path), "syn", {**settings, "modalities": {"training": 4}})
    assert not (tmp_path / "syn").exists()
    with pytest.raises(ValueError, match=r"modality name 'image\.v2': a modality name must be"):
        SyntheticConfig(**settings, modalities={"image.v2": 4})


# ---------------------------------------------------------------- 2. .npy header vs file size


def _npy_with_header(path: Path, shape: tuple, payload: bytes) -> Path:
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(payload)
    return path


def test_npy_header_claiming_more_data_than_the_file(tmp_path: Path) -> None:
    payload = np.ones((4, 3), dtype=np.float32).tobytes()
    path = _npy_with_header(tmp_path / "image_feat.npy", (4, 10**11), payload)
    size = path.stat().st_size
    with pytest.raises(
        DataFormatError,
        match=re.escape(
            f"{path}: the .npy header declares shape (4, 100000000000) of float32 "
            f"(1600000000000 bytes of data), but the file holds {size} bytes"
        ),
    ):
        read_feature_file(path, 4, "image")


def test_truncated_npy(tmp_path: Path) -> None:
    path = _npy_with_header(tmp_path / "image_feat.npy", (4, 3), b"\0" * 40)
    with pytest.raises(DataFormatError, match=r"shape \(4, 3\) of float32 \(48 bytes of data\)"):
        read_feature_file(path, 4, "image")


def test_npy_with_bytes_after_its_data(tmp_path: Path) -> None:
    # numpy would ignore them; they mean a damaged or concatenated file
    payload = np.ones((4, 3), dtype=np.float32).tobytes() + b"\0" * 8
    path = _npy_with_header(tmp_path / "image_feat.npy", (4, 3), payload)
    with pytest.raises(DataFormatError, match=r"56 after the header\); the file is longer than"):
        read_feature_file(path, 4, "image")
    path = _npy_with_header(tmp_path / "image_feat.npy", (4, 3), payload[:48])
    assert read_feature_file(path, 4, "image").shape == (4, 3)


# ---------------------------------------------------------------- 3. float64 beyond float32


def test_float64_overflowing_float32(tmp_path: Path) -> None:
    array = np.ones((4, 3))
    array[1, 2] = 1e300
    array[3, 0] = -1e300
    path = tmp_path / "image_feat.npy"
    np.save(path, array)
    with pytest.raises(
        DataFormatError,
        match=re.escape(f"{path}: modality 'image' (float64) has 2 value(s) beyond float32's range")
        + r".* in 2 row\(s\), first at item \(row\) 1 \(value 1e\+300\)",
    ):
        read_feature_file(path, 4, "image")


def test_float64_rows_flushing_to_zero_in_float32(tmp_path: Path) -> None:
    array = np.ones((4, 3))
    array[2] = 1e-300  # the whole row would become zeros
    array[0, 0] = 1e-300  # row 0 keeps its other values: accepted on its own
    path = tmp_path / "image_feat.npy"
    np.save(path, array)
    with pytest.raises(
        DataFormatError,
        match=re.escape(f"{path}: modality 'image' (float64) has 4 nonzero value(s) too small")
        + r".*1 item row\(s\) would become all zeros, first at item \(row\) 2",
    ):
        read_feature_file(path, 4, "image")
    array[2] = 1.0
    np.save(path, array)
    features = read_feature_file(path, 4, "image")
    assert features.dtype == np.float32 and features[0, 0] == 0 and features[0, 1] == 1


# ---------------------------------------------------------------- 4. ids: ASCII digits only


@pytest.mark.parametrize(
    "value",
    ["1_0", "+1", "\u0661", "\uff11", "1\u00a0", "\u20031"],
    ids=["underscore", "plus", "arabic_indic", "fullwidth", "nbsp_after", "em_space_before"],
)
def test_non_ascii_decimal_id_refused(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, INTER + f"{value}\t2\t0\n")
    with pytest.raises(
        DataFormatError,
        match=re.escape(f"{path}:9: field 'userID' must be an integer, got {value!r}")
        + r" \(plain ASCII digits 0-9\)",
    ):
        read_inter_file(path)


def test_ascii_spaces_around_ids_still_fine(tmp_path: Path) -> None:
    inter = read_inter_file(_write(tmp_path, INTER + " 2 \t 1\t0 \n"))
    assert (inter.user[-1], inter.item[-1]) == (2, 1)


# ---------------------------------------------------------------- 5. line numbers


def test_line_separator_in_ignored_column_is_not_a_line_break(tmp_path: Path) -> None:
    text = "userID\titemID\tx_label\ttitle\n" + "".join(
        f"{r}\tt\u2028itle\x0c\x1c\x85\n" for r in ROWS
    )
    inter = read_inter_file(_write(tmp_path, text))
    assert inter.user.tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_form_feed_does_not_shift_later_line_numbers(tmp_path: Path) -> None:
    text = "userID\titemID\tx_label\ttitle\n0\t0\t0\tpage\x0cbreak\n1\t1\t0\tt\nx\t1\t0\tt\n"
    path = _write(tmp_path, text)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:4: field 'userID'")):
        read_inter_file(path)


def test_cr_only_line_ends_still_fine(tmp_path: Path) -> None:
    path = tmp_path / "toy.inter"
    path.write_bytes(INTER.replace("\n", "\r").encode())
    inter = read_inter_file(path)
    assert inter.user.tolist() == [0, 0, 0, 1, 1, 2, 2]
    path.write_bytes((INTER + "x\t1\t0\r").replace("\n", "\r").encode())
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:9: field 'userID'")):
        read_inter_file(path)


# ---------------------------------------------------------------- 6. Python API arguments


@pytest.mark.parametrize(
    "args, message",
    [
        (("ROOT", None), r"argument 'name' must be a non-empty str .*got NoneType None"),
        (("ROOT", ""), r"argument 'name' must be a non-empty str"),
        ((5, NAME), r"argument 'root' must be a str or os\.PathLike .*got int 5"),
        (
            ("ROOT", NAME, ["image_feat.npy"]),
            r"argument 'modalities' must be a mapping of modality name -> feature file name.*"
            r"got list \['image_feat\.npy'\]",
        ),
        (
            ("ROOT", NAME, {"image": 5}),
            r"modalities entry 'image': the feature file name must be a str or os\.PathLike, "
            r"got int 5",
        ),
    ],
)
def test_api_argument_types(tmp_path: Path, args: tuple, message: str) -> None:
    _folder(tmp_path)
    args = tuple(str(tmp_path) if a == "ROOT" else a for a in args)
    with pytest.raises(TypeError, match=message):
        MMRecDataset(*args)


def test_api_path_arguments_accepted(tmp_path: Path) -> None:
    _folder(tmp_path)
    ds = MMRecDataset(tmp_path, NAME, {"image": Path("image_feat.npy")})
    assert ds.modalities == ["image"] and ds.modality_files == {"image": "image_feat.npy"}


# ---------------------------------------------------------------- 7. synthetic interaction count


def test_synthetic_more_interactions_than_the_generator_can_draw() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "num_interactions must be at most num_users * max(min_user_interactions, "
            "num_items // 2) = 20 * 5 = 100 (each user picks at most 5 items), got 1000"
        ),
    ):
        SyntheticConfig(num_users=20, num_items=10, num_interactions=1000)
    assert SyntheticConfig(num_users=20, num_items=10, num_interactions=100)


@pytest.mark.parametrize("count", [0, 99])
def test_synthetic_fewer_interactions_than_every_user_gets(count: int) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "num_interactions must be at least num_users * min_user_interactions = 20 * 5 = 100"
        )
        + f".*got {count}$",
    ):
        SyntheticConfig(num_users=20, num_items=10, num_interactions=count)
