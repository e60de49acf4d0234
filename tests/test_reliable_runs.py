"""Checkpoint/resume after SIGKILL, determinism and the NaN guard, through the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kill_points import wait_for_marker

from pyg_dhmrec.cli import main
from pyg_dhmrec.models import LightGCN
from pyg_dhmrec.train import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parent.parent
KILL_POINTS = REPO / "tests" / "kill_points.py"
TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"
MODEL_ARGS = {"lightgcn": [], "dhmrec": ["--knn_k", "3"]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def train_args(data_root: Path, output: Path, model: str, *extra: str) -> list[str]:
    return [
        *("--model", model, "--dataset", "synthetic", "--data-root", str(data_root)),
        *("--output", str(output), "--synthetic", TINY, "--topk", "[10,20]"),
        *("--device", "cpu", "--quiet", *MODEL_ARGS[model], *extra),
    ]


def read(folder: Path) -> dict:
    with open(folder / "results.json", encoding="utf-8") as f:
        return json.load(f)


def without_timings(history: list) -> list:
    return [{k: v for k, v in h.items() if k not in ("train_s", "eval_s")} for h in history]


def checkpoint_epoch(path: Path) -> int:
    try:
        return read_checkpoint(path)["progress"]["epoch"]
    except CheckpointError:  # not written yet
        return 0


@pytest.mark.parametrize("model", ["lightgcn", "dhmrec"])
def test_sigkill_then_resume_matches_uninterrupted(
    data_root: Path, tmp_path: Path, model: str
) -> None:
    common = ("--epochs", "12", "--patience", "50", "--batch_size", "128", "--seed", "3")
    assert main(train_args(data_root, tmp_path / "full", model, *common)) == 0
    full = read(tmp_path / "full")

    killed = tmp_path / "killed"
    marker = tmp_path / "at_kill_point"
    point = "pyg_dhmrec.train:Trainer.save_checkpoint@3"  # stops once epoch 3 is saved
    cmd = [sys.executable, str(KILL_POINTS), point, str(marker)]
    cmd += train_args(data_root, killed, model, *common)
    # Same thread count as this process: 1 and 2 threads round sums differently.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_marker(marker, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = checkpoint_epoch(killed / "checkpoint.pt")
    assert killed_at == 3 and not (killed / "results.json").exists()
    assert json.loads((killed / "config.json").read_text())["seed"] == 3

    assert main(["--resume", str(killed), "--quiet"]) == 0
    resumed = read(killed)
    assert resumed["test"] == full["test"]
    assert resumed["valid"] == full["valid"]
    assert (resumed["best_epoch"], resumed["epochs_run"]) == (full["best_epoch"], 12)
    assert without_timings(resumed["history"]) == without_timings(full["history"])
    assert torch.equal(
        torch.load(killed / "per_user_test.pt")["recall@20"],
        torch.load(tmp_path / "full" / "per_user_test.pt")["recall@20"],
    )


@pytest.mark.parametrize("model", ["lightgcn", "dhmrec"])
def test_same_seed_same_metrics_and_recorded(data_root: Path, tmp_path: Path, model: str) -> None:
    runs = []
    for name in ("a", "b"):
        assert main(train_args(data_root, tmp_path / name, model, "--epochs", "3")) == 0
        runs.append(read(tmp_path / name))
    a, b = runs
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert without_timings(a["history"]) == without_timings(b["history"])
    assert a["seed"] == a["config"]["seed"] == 2024
    env = a["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert {"python", "torch_geometric", "git_commit"} <= set(env)


def test_nan_loss_exit_2_keeps_last_checkpoint(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    epochs = {"n": 0}
    original_start, original_loss = LightGCN.on_train_epoch_start, LightGCN.loss

    def counting_start(self: LightGCN) -> None:
        epochs["n"] += 1
        original_start(self)

    def nan_at_epoch_3(self: LightGCN, batch):
        parts = original_loss(self, batch)
        if epochs["n"] >= 3:
            parts["reg"] = parts["reg"] * float("nan")
        return parts

    monkeypatch.setattr(LightGCN, "on_train_epoch_start", counting_start)
    monkeypatch.setattr(LightGCN, "loss", nan_at_epoch_3)
    out = tmp_path / "run"
    assert main(train_args(data_root, out, "lightgcn", "--epochs", "5")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: epoch 3: loss part(s) reg became NaN or inf"), err
    assert f"the checkpoint of epoch 2 is kept in {out / 'checkpoint.pt'}" in err
    assert checkpoint_epoch(out / "checkpoint.pt") == 2
    assert not (out / "results.json").exists()
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint left behind
