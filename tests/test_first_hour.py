"""Issue 15, what a new user meets first: a dataset folder of one's own without YAML, the Python
API, cut-offs above the item count, train.log, progress bars in logs, --help and suggestions."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import pyg_dhmrec
from pyg_dhmrec.cli import build_parser, main, resolve_config
from pyg_dhmrec.config import CONFIG_DIR, ConfigError, load_config
from pyg_dhmrec.data import MMRecDataset
from pyg_dhmrec.data.dataset import load_dataset
from pyg_dhmrec.models import BPR
from pyg_dhmrec.train import Trainer

REPO = Path(__file__).resolve().parent.parent
NUM_ITEMS = 20


def write_shop(folder: Path, features: dict[str, int], num_users: int = 30) -> Path:
    """``folder`` (named like its .inter) in MMRec's format: 4 train, 1 valid, 1 test item per
    user among ``NUM_ITEMS`` items, and one ``<name>.npy`` of ``dim`` columns per feature."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["userID\titemID\tx_label"]
    for user in range(num_users):
        items = rng.permutation(NUM_ITEMS)[:6]
        labels = [0, 0, 0, 0, 1, 2]
        rows += [f"{user}\t{item}\t{label}" for item, label in zip(items, labels)]
    # every item id occurs; two users share them, so each keeps items to draw negatives from
    rows += [f"{num_users + item % 2}\t{item}\t0" for item in range(NUM_ITEMS)]
    (folder / f"{folder.name}.inter").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for name, dim in features.items():
        np.save(folder / f"{name}.npy", rng.random((NUM_ITEMS, dim), dtype=np.float32))
    return folder


def shop_data(tmp_path: Path):
    """The HeteroData of a :func:`write_shop` folder with image features."""
    write_shop(tmp_path / "shop", {"image_feat": 6})
    return MMRecDataset(str(tmp_path), "shop", modalities={"image": "image_feat.npy"})[0]


def cli_args(dataset: str, output: Path, *extra: str) -> list[str]:
    return [*("--dataset", dataset, "--output", str(output), "--device", "cpu"), *extra]


# ---------------------------------------------------------------- own dataset folders


def test_folder_without_yaml_discovers_inter_and_features(tmp_path: Path, caplog) -> None:
    write_shop(tmp_path / "myshop", {"image_feat": 6, "text_feat": 4, "notes": 3})
    with caplog.at_level(logging.INFO, logger="pyg_dhmrec"):
        config = load_config("vbpr", "myshop", {"data_root": str(tmp_path)})
    assert config["dataset"] == "myshop"
    assert config["modalities"] == {"image": "image_feat.npy", "text": "text_feat.npy"}
    assert "modalities image (image_feat.npy), text (text_feat.npy)" in caplog.text
    data = load_dataset(config)[0]
    assert data["item"].image.shape == (NUM_ITEMS, 6)
    assert data["item"].text.shape == (NUM_ITEMS, 4)


def test_dataset_given_as_path_sets_the_data_root(tmp_path: Path) -> None:
    folder = write_shop(tmp_path / "shops" / "myshop", {"image_feat": 5})
    config = load_config("vbpr", str(folder))
    assert (config["dataset"], config["data_root"]) == ("myshop", str(folder.parent))
    assert config["modalities"] == {"image": "image_feat.npy"}
    with pytest.raises(ConfigError, match="drop --data-root"):
        load_config("vbpr", str(folder), {"data_root": str(tmp_path)})


def test_modalities_option_overrides_discovery(tmp_path: Path) -> None:
    write_shop(tmp_path / "myshop", {"image_feat": 6, "img": 7, "txt": 2})
    argv = ["--model", "vbpr", "--dataset", "myshop", "--data-root", str(tmp_path)]
    argv += ["--modalities", "{image: img.npy, text: txt.npy}"]
    config = resolve_config(*build_parser().parse_known_args(argv))
    assert config["modalities"] == {"image": "img.npy", "text": "txt.npy"}
    data = load_dataset(config)[0]
    assert data["item"].image.shape == (NUM_ITEMS, 7) and data["item"].text.shape == (NUM_ITEMS, 2)


def test_feature_rows_are_checked_against_items(tmp_path: Path, capsys) -> None:
    folder = write_shop(tmp_path / "myshop", {"text_feat": 4})
    np.save(folder / "image_feat.npy", np.zeros((NUM_ITEMS - 1, 3), dtype=np.float32))
    argv = cli_args(str(folder), tmp_path / "run", "--model", "vbpr", "--epochs", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "image_feat.npy" in err and str(NUM_ITEMS) in err, err


@pytest.mark.parametrize("how", ["name", "path"])
def test_folder_without_inter_says_what_it_must_contain(tmp_path: Path, capsys, how) -> None:
    folder = tmp_path / "myshop"
    folder.mkdir()
    np.save(folder / "image_feat.npy", np.zeros((3, 2), dtype=np.float32))
    argv = ["--dataset", "myshop", "--data-root", str(tmp_path)]
    assert main(argv if how == "name" else ["--dataset", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder.resolve()} has no myshop.inter (it holds: image_feat.npy)" in err, err
    assert "a dataset folder must contain myshop.inter (tab-separated" in err


@pytest.mark.parametrize("entry", ["myshop.inter", "image_feat.npy"])
def test_folder_in_place_of_a_data_file_is_named(tmp_path: Path, capsys, entry: str) -> None:
    folder = write_shop(tmp_path / "myshop", {"text_feat": 4})
    path = folder / entry
    if path.exists():
        path.unlink()
    path.mkdir()  # e.g. an archive unpacked into a folder of the file's name
    assert main(["--model", "vbpr", "--dataset", "myshop", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path.resolve()} is not a regular file (a folder?)"), err


def test_mixing_weights_for_other_modalities_say_how_to_set_them(tmp_path: Path, capsys) -> None:
    """DHMRec's YAML weights name image and text; a folder with a third modality gets an error
    that spells out a setting, and that setting trains."""
    folder = write_shop(tmp_path / "myshop", {"image_feat": 4, "text_feat": 3, "video_feat": 2})
    argv = cli_args(str(folder), tmp_path / "run", "--model", "dhmrec", "--knn_k", "3")
    argv += ["--epochs", "1", "--quiet", "--baseline", "null"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    suggested = "{image: 0.333, text: 0.333, video: 0.333}"
    assert err == (
        "error: modality_weights must give one weight per modality ['image', 'text', 'video'], "
        f"got {{'image': 0.1, 'text': 0.9}}; set them for this dataset, e.g. --modality_weights "
        f"'{suggested}' (or in the model's per_dataset entry)"
    ), err
    argv[argv.index(str(tmp_path / "run"))] = str(tmp_path / "run2")
    assert main([*argv, "--modality_weights", suggested]) == 0


def test_unknown_dataset_says_where_it_looked_and_what_to_put_there(tmp_path: Path, capsys):
    assert main(["--dataset", "myshop", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'myshop'; available: baby,"), err
    assert f"looked for the folder {(tmp_path / 'myshop').resolve()}" in err
    assert "must contain myshop.inter" in err and "_feat.npy" in err


# ---------------------------------------------------------------- runs: cut-offs, logs


def test_own_folder_trains_with_cutoff_above_item_count_and_writes_train_log(
    tmp_path: Path, caplog
) -> None:
    folder = write_shop(tmp_path / "myshop", {"image_feat": 6, "text_feat": 4})
    run = tmp_path / "run"
    argv = cli_args(str(folder), run, "--model", "vbpr", "--epochs", "2", "--quiet")
    with caplog.at_level(logging.INFO, logger="pyg_dhmrec"):
        assert main(argv) == 0  # default topk [5, 10, 20, 50] with 20 items
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "cut-off(s) 50 above the 20 items: all items are ranked for them (positions past the "
        "last item count as misses)"
    ]
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["recall@50"] == pytest.approx(results["test"]["recall@20"])
    assert results["test"]["precision@50"] == pytest.approx(
        results["test"]["precision@20"] * 20 / 50
    )
    assert results["config"]["modalities"] == {"image": "image_feat.npy", "text": "text_feat.npy"}

    log = (run / "train.log").read_text(encoding="utf-8")
    assert f"training vbpr on myshop in {run}" in log
    assert "processing dataset 'myshop'" in log
    assert "epoch    1 | bpr" in log and "epoch    2 | bpr" in log
    assert "vbpr on myshop: best epoch" in log
    assert "\r" not in log and "it/s" not in log

    assert main(["--resume", str(run), "--quiet"]) == 0
    resumed = (run / "train.log").read_text(encoding="utf-8")
    assert resumed.startswith(log)  # appended, the first run's lines kept
    tail = resumed[len(log) :]
    assert f"resuming vbpr on myshop in {run}" in tail and "vbpr on myshop: best epoch" in tail


def test_failed_run_ends_its_log_with_the_error(tmp_path: Path, monkeypatch) -> None:
    folder = write_shop(tmp_path / "myshop", {})
    nan = {"bpr": torch.tensor(float("nan"))}
    monkeypatch.setattr(BPR, "loss", lambda self, batch, out=None: nan)
    run = tmp_path / "run"
    assert main(cli_args(str(folder), run, "--model", "bpr", "--epochs", "1", "--quiet")) == 2
    last = (run / "train.log").read_text(encoding="utf-8").splitlines()[-1]
    assert last.endswith("error: epoch 1: loss part(s) bpr became NaN or inf"), last


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar_only_when_stderr_is_a_terminal(
    tmp_path: Path, capsys, monkeypatch, tty: bool
) -> None:
    data = shop_data(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    config = {"batch_size": 16, "progress": True}
    trainer = Trainer(BPR(data), data, config, torch.device("cpu"))
    trainer.train_epoch(1)
    err = capsys.readouterr().err
    assert ("epoch 1:" in err) is tty, err  # the control case shows the bar is there at a tty


# ---------------------------------------------------------------- Python API


def test_partial_config_to_trainer_takes_overall_defaults(tmp_path: Path) -> None:
    data = shop_data(tmp_path)
    results = Trainer(BPR(data), data, {"epochs": 2}, torch.device("cpu")).fit()
    assert results["epochs_run"] == 2 and "recall@20" in results["test"]
    assert results["config"]["batch_size"] == 2048 and results["model"] == "BPR"


def test_resolve_config_with_a_namespace_of_model_and_dataset_only() -> None:
    config = resolve_config(argparse.Namespace(model="bpr", dataset="synthetic"), [])
    assert (config["model"], config["data_root"], config["epochs"]) == ("bpr", "datasets", 1000)


def test_build_model_and_train_on_a_heterodata(tmp_path: Path) -> None:
    data = shop_data(tmp_path)
    model = pyg_dhmrec.build_model("bpr", data, embedding_dim=16)
    assert model.user_embedding.embedding_dim == 16  # the keyword over configs/overall.yaml
    results = pyg_dhmrec.train(model, data, epochs=2, output=tmp_path / "run", device="cpu")
    assert results["epochs_run"] == 2 and (tmp_path / "run" / "best.pt").is_file()
    vbpr = pyg_dhmrec.build_model("vbpr", data)  # a multimodal model reads data's features
    assert vbpr.modalities == ["image"]
    with pytest.raises(ConfigError, match="Did you mean: learning_rate"):
        pyg_dhmrec.train(model, data, lr=0.1)


def test_fit_on_a_folder_by_name(tmp_path: Path) -> None:
    write_shop(tmp_path / "myshop", {"image_feat": 6, "text_feat": 4})
    results = pyg_dhmrec.fit(
        model="bpr",
        dataset="myshop",
        data_root=str(tmp_path),
        epochs=2,
        output=str(tmp_path / "run"),
        device="cpu",
        progress=False,
    )
    assert (results["model"], results["dataset"], results["epochs_run"]) == ("bpr", "myshop", 2)
    assert (tmp_path / "run" / "results.json").is_file()
    assert (tmp_path / "run" / "train.log").is_file()


# ---------------------------------------------------------------- help and suggestions


def test_help_lists_defaults_and_common_keys(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "(default datasets)",
        "runs/<model>-<dataset>-<date-time>",
        "cuda:N (default auto)",
        "--epochs",
        "(default 1000)",
        "--patience",
        "(default 20)",
        "--learning_rate",
        "(default 0.001)",
        "--batch_size",
        "(default 2048)",
    ):
        assert text in out, text


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model", "freedm"], "unknown model 'freedm'; available: bm3, "),
        (["--dataset", "babby"], "unknown dataset 'babby'; available: "),
        (["--lr", "0.01"], "command line: unknown key 'lr'. Did you mean: learning_rate?"),
        (["--datset", "baby"], "command line: unknown key 'datset'. Did you mean: dataset?"),
    ],
    ids=["model", "dataset", "key", "option"],
)
def test_misspelt_model_dataset_and_key_get_a_suggestion(capsys, argv, expected) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    hint = {"freedm": "freedom", "babby": "baby"}.get(argv[1])
    if hint:
        assert f". Did you mean: {hint}?" in err
    assert "Known keys" not in err  # no dump of every key when one is close


# ---------------------------------------------------------------- packaging


def test_wheel_ships_the_configs_and_the_entry_point(tmp_path: Path) -> None:
    # .ci/run installs this wheel into a fresh venv and trains from it; here: its contents
    pytest.importorskip("setuptools")  # built without isolation: no download in the test
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(REPO), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pyg_dhmrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"pyg_dhmrec/configs/{p.relative_to(CONFIG_DIR)}" for p in CONFIG_DIR.rglob("*.yaml")
    }
    assert "pyg_dhmrec/configs/overall.yaml" in shipped and shipped <= names
    assert "pyg_dhmrec/__main__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pyg-dhmrec = pyg_dhmrec.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.parametrize("quiet, tty", [(False, True), (True, True), (False, False)])
def test_download_bars_only_at_a_terminal_and_never_with_quiet(
    tmp_path: Path, monkeypatch, quiet: bool, tty: bool
) -> None:
    seen = {}

    def build(*args, progress, **kwargs):
        seen["progress"] = progress
        raise InterruptedError  # stop before any download

    monkeypatch.setattr("pyg_dhmrec.data.amazon.build_amazon_dataset", build)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    config = load_config("bpr", "amazon:Toys", {"data_root": str(tmp_path), "progress": not quiet})
    with pytest.raises(InterruptedError):
        load_dataset(config)
    assert seen["progress"] is (tty and not quiet)


def test_grid_by_name_reads_the_packaged_grid(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def fake_grid(config, axes, output, runner, source, check_point):
        seen["axes"] = axes
        raise InterruptedError  # the grid itself is tested in test_experiments.py

    monkeypatch.setattr("pyg_dhmrec.cli.run_grid", fake_grid)
    monkeypatch.chdir(tmp_path)  # no configs/ here, as after pip install
    with pytest.raises(InterruptedError):
        main(["--model", "lightgcn", "--grid", "lightgcn"])
    assert seen["axes"] == yaml.safe_load((CONFIG_DIR / "grids" / "lightgcn.yaml").read_text())
