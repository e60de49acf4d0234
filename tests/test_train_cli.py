"""End-to-end tests of the command line and the trainer on a tiny synthetic dataset."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyg_dhmrec.cli import main

REPO = Path(__file__).resolve().parent.parent
TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"
TEST_KEYS = {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@20", "map@20"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _args(data_root: Path, output: Path, *extra: str, model: str = "lightgcn") -> list:
    return [
        "--model",
        model,
        "--dataset",
        "synthetic",
        "--data-root",
        str(data_root),
        "--output",
        str(output),
        "--synthetic",
        TINY,
        "--topk",
        "[10,20]",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def _run(data_root: Path, output: Path, *extra: str, model: str = "lightgcn") -> dict:
    assert main(_args(data_root, output, *extra, model=model)) == 0
    with open(output / "results.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def three_epochs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run(data_root, tmp_path_factory.mktemp("run") / "a", "--epochs", "3", "--seed", "7")


def test_results_json_contents(three_epochs: dict, data_root: Path) -> None:
    r = three_epochs
    assert (r["model"], r["dataset"]) == ("lightgcn", "synthetic")
    assert r["config"]["epochs"] == 3
    assert r["config"]["seed"] == 7
    assert r["config"]["topk"] == [10, 20]
    assert r["config"]["progress"] is False  # --quiet
    assert r["config"]["data_root"] == str(data_root)
    assert r["config"]["synthetic"]["num_users"] == 60
    assert r["epochs_run"] == 3
    assert 1 <= r["best_epoch"] <= 3
    assert "recall@20" in r["valid"]
    assert TEST_KEYS <= set(r["test"])
    for key, value in r["test"].items():
        assert 0.0 <= value <= 1.0, key
    assert r["test"]["recall@20"] >= r["test"]["recall@10"]
    assert {"train_s_per_epoch", "eval_s", "total_s"} <= set(r["timing"])
    assert all(r["timing"][k] >= 0 for k in ("train_s_per_epoch", "eval_s", "total_s"))
    # CPU seconds per epoch: the mean of the epochs' own records, positive (the process trained)
    cpu = [h["train_cpu_s"] for h in r["history"]]
    assert all(c > 0 for c in cpu)
    assert r["timing"]["train_cpu_s_per_epoch"] == pytest.approx(sum(cpu) / len(cpu))
    assert r["peak_rss_mb"] > 10
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
    assert all(set(h["loss"]) == {"bpr", "reg"} for h in r["history"])
    # The valid metrics reported are those of the best epoch.
    assert r["valid"] == r["history"][r["best_epoch"] - 1]["valid"]
    stats = r["dataset_stats"]
    assert (stats["users"], stats["items"]) == (60, 40)
    assert stats["modalities"] == {"image": [40, 8], "text": [40, 4]}


def test_run_folder_and_summary(data_root: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "run"
    r = _run(data_root, output, "--epochs", "1", model="bpr")
    assert (output / "best.pt").is_file()
    state = torch.load(output / "best.pt")
    assert state["user_embedding.weight"].shape == (60, 64)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "bpr" and summary["best_epoch"] == r["best_epoch"] == 1
    assert summary["test"]["recall@20"] == round(r["test"]["recall@20"], 4)


def test_same_seed_same_results(three_epochs: dict, data_root: Path, tmp_path: Path) -> None:
    again = _run(data_root, tmp_path / "b", "--epochs", "3", "--seed", "7")
    assert again["test"] == three_epochs["test"]
    assert again["valid"] == three_epochs["valid"]
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in three_epochs["history"]]
    other = _run(data_root, tmp_path / "c", "--epochs", "3", "--seed", "8")
    assert [h["loss"] for h in other["history"]] != [h["loss"] for h in three_epochs["history"]]


def _expected_stop(history: list, metric: str, patience: int) -> tuple:
    """Replay the early-stopping rule: (last epoch, best epoch)."""
    best, best_epoch, bad = -math.inf, 0, 0
    for record in history:
        if "valid" in record:
            value = record["valid"][metric]
            if value > best:  # strict improvement only
                best, best_epoch, bad = value, record["epoch"], 0
            else:
                bad += 1
        if bad >= patience:
            return record["epoch"], best_epoch
    return history[-1]["epoch"], best_epoch


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping(data_root: Path, tmp_path: Path, patience: int) -> None:
    # A large step size so that valid recall@20 rises for a while before it wavers.
    r = _run(
        data_root,
        tmp_path / "run",
        *("--epochs", "40", "--patience", str(patience), "--learning_rate", "0.05"),
    )
    history = r["history"]
    assert r["epochs_run"] == len(history) < 40  # stopped early
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    values = [h["valid"]["recall@20"] for h in history]
    stop, best_epoch = _expected_stop(history, "recall@20", patience)
    assert stop == r["epochs_run"]
    assert best_epoch == r["best_epoch"]
    # The last `patience` evaluations did not beat the best before them; all earlier ones did
    # not trigger a stop.
    best_before = max(values[: len(values) - patience])
    assert all(v <= best_before for v in values[len(values) - patience :])
    assert values[r["best_epoch"] - 1] == max(values)
    assert values.index(max(values)) == r["best_epoch"] - 1  # the first epoch reaching it


def test_eval_step(data_root: Path, tmp_path: Path) -> None:
    r = _run(data_root, tmp_path / "run", "--epochs", "5", "--eval_step", "2", "--patience", "10")
    evaluated = [h["epoch"] for h in r["history"] if "valid" in h]
    assert evaluated == [2, 4, 5]  # every eval_step epochs, and the last one
    assert r["best_epoch"] in evaluated


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model", "nope"], ["unknown model 'nope'; available: ", "bpr", "lightgcn"]),
        (["--dataset", "nope"], ["unknown dataset 'nope'; available: ", "baby", "synthetic"]),
        (["--epoch", "3"], ["unknown key 'epoch'", "Did you mean: epochs?"]),
        (
            ["--frobnicate", "1"],
            ["unknown key 'frobnicate'", "Known keys: amazon, baseline, batch_size"],
        ),
        (["--epochs", "abc"], ["key 'epochs' expects int"]),
        (["--early_stop_metric", "recall@5"], ["choose one of recall@10, recall@20"]),
    ],
    ids=["model", "dataset", "typo", "option", "type", "metric"],
)
def test_errors_exit_2(data_root: Path, tmp_path: Path, capsys, argv: list, expected: list) -> None:
    args = _args(data_root, tmp_path / "run", "--epochs", "1")
    for i in range(0, len(argv), 2):  # replace an option already in args, else append
        if argv[i] in args:
            args[args.index(argv[i]) + 1] = argv[i + 1]
        else:
            args += argv[i : i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_exit_2(data_root: Path, tmp_path: Path, capsys) -> None:
    args = _args(data_root, tmp_path / "run", "--epochs", "1")
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_run_py_help() -> None:
    out = subprocess.run(
        [sys.executable, "run.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard only: importing torch is slow on a busy machine
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: run.py")
    for text in ("--model", "--dataset", "--data-root", "--quiet", "bpr", "lightgcn", "synthetic"):
        assert text in out.stdout
