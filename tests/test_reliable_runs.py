"""Checkpoint/resume after SIGKILL, determinism and the NaN guard, through the command line."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from kill_points import stopped_at

from pyg_dhmrec.cli import main
from pyg_dhmrec.experiment import config_differences
from pyg_dhmrec.models import LightGCN
from pyg_dhmrec.train import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parent.parent
KILL_POINTS = REPO / "tests" / "kill_points.py"
TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"
MODEL_ARGS = {
    "lightgcn": [],
    "dhmrec": ["--knn_k", "3"],
    # a model with its own phase (diffusion) and per-epoch generated graphs
    "diffmm": ["--denoiser_dims", "[16]", "--diffusion_batch_size", "16"],
}
#: A schedule steep enough that a resume without its state would train differently.
SCHEDULED = ["--learning_rate_scheduler", "[0.5,2]"]


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
    return [
        {k: v for k, v in h.items() if k not in ("train_s", "train_cpu_s", "eval_s")}
        for h in history
    ]


def checkpoint_epoch(path: Path) -> int:
    try:
        return read_checkpoint(path)["progress"]["epoch"]
    except CheckpointError:  # not written yet
        return 0


@pytest.mark.parametrize(
    "model, extra",
    [("lightgcn", []), ("dhmrec", []), ("diffmm", []), ("lightgcn", SCHEDULED)],
    ids=["lightgcn", "dhmrec", "diffmm", "lightgcn-lr-schedule"],
)
def test_sigkill_then_resume_matches_uninterrupted(
    data_root: Path, tmp_path: Path, model: str, extra: list[str]
) -> None:
    common = ("--epochs", "7", "--patience", "50", "--batch_size", "256", "--seed", "3", *extra)
    assert main(train_args(data_root, tmp_path / "full", model, *common)) == 0
    full = read(tmp_path / "full")

    killed = tmp_path / "killed"
    point = "pyg_dhmrec.train:Trainer.save_checkpoint@3"  # stops once epoch 3 is saved
    args = train_args(data_root, killed, model, *common)
    with stopped_at(point, tmp_path / "at_kill_point", args):
        pass
    killed_at = checkpoint_epoch(killed / "checkpoint.pt")
    assert killed_at == 3 and not (killed / "results.json").exists()
    assert json.loads((killed / "config.json").read_text())["seed"] == 3

    assert main(["--resume", str(killed), "--quiet"]) == 0
    resumed = read(killed)
    assert resumed["test"] == full["test"]
    assert resumed["valid"] == full["valid"]
    assert (resumed["best_epoch"], resumed["epochs_run"]) == (full["best_epoch"], 7)
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

    def nan_at_epoch_3(self: LightGCN, batch, out=None):
        parts = original_loss(self, batch, out)
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


# ----- run folders hold one configuration -----
def test_plain_run_into_folder_of_other_config_refused(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(train_args(data_root, out, "lightgcn", "--epochs", "1")) == 0
    before = read(out)
    capsys.readouterr()
    assert main(train_args(data_root, out, "lightgcn", "--epochs", "2", "--seed", "9")) == 2
    assert capsys.readouterr().err == (
        f"error: {out}: holds a run of another configuration (epochs: 1 -> 2; seed: 2024 -> 9; "
        "stored -> requested); a folder holds one configuration: choose another --output or "
        "delete the folder\n"
    )
    assert read(out) == before  # untouched
    assert json.loads((out / "config.json").read_text())["epochs"] == 1


def test_config_differences_compare_folders_not_spellings(tmp_path: Path, monkeypatch) -> None:
    """A data folder given relative to the current folder or absolute is one configuration;
    another folder, or another key, still differs."""
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    stored = {"data_root": str(tmp_path / "data"), "epochs": 1, "cache_dir": None}
    assert config_differences(stored, dict(stored, data_root="../data")) == []
    assert config_differences(stored, dict(stored, data_root=".")) == [
        f'data_root: "{tmp_path / "data"}" -> "."'
    ]
    assert config_differences(stored, dict(stored, epochs="1")) == ['epochs: 1 -> "1"']
    assert config_differences({"seed": "."}, {"seed": str(tmp_path / "other")}) != []


def test_grid_rerun_with_changed_base_option_refused(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("num_ui_layers: [1, 2]\n")
    out = tmp_path / "grid"
    assert (
        main([*train_args(data_root, out, "lightgcn", "--epochs", "1"), "--grid", str(grid)]) == 0
    )
    (out / "num_ui_layers=2" / "results.json").unlink()  # as if killed after its last checkpoint
    capsys.readouterr()
    args = [*train_args(data_root, out, "lightgcn", "--epochs", "2"), "--grid", str(grid)]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {out / 'num_ui_layers=1'}: holds a run of another configuration (epochs: 1 -> 2; "
        "stored -> requested); a folder holds one configuration: choose another --output or "
        "delete the folder\n"
    )
    assert not (out / "num_ui_layers=2" / "results.json").exists()  # nothing resumed either


def test_killed_rerun_of_finished_folder_is_not_taken_as_finished(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "seeds"
    args = [*train_args(data_root, out, "lightgcn", "--epochs", "2"), "--seeds", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "(one seed: no std)" in printed and "±" not in printed  # no spread of one value
    point = out / "seed=2024"
    first = read(point)
    # A plain run with the same configuration into the finished point, killed after epoch 1.
    rerun = train_args(data_root, point, "lightgcn", "--epochs", "2")
    with stopped_at("pyg_dhmrec.train:Trainer.save_checkpoint@1", tmp_path / "marker", rerun):
        assert not (point / "results.json").exists()  # the old results went first
    assert checkpoint_epoch(point / "checkpoint.pt") == 1
    assert main(args) == 0  # --seeds resumes the point instead of reading stale results
    again = read(point)
    assert again["epochs_run"] == 2 and again["test"] == first["test"]


def test_concurrent_run_into_locked_folder_refused(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    first = train_args(data_root, out, "lightgcn", "--epochs", "2")
    point = "pyg_dhmrec.train:Trainer.save_checkpoint@1"
    with stopped_at(point, tmp_path / "at_kill_point", first) as proc:  # mid-training
        assert main(train_args(data_root, out, "lightgcn", "--epochs", "2")) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}: in use by another run (pid {proc.pid} since "), err
        assert err.endswith(
            f"; lock file {out / 'run.lock'}); wait for it to end or choose another --output\n"
        )
        assert main(["--resume", str(out), "--quiet"]) == 2
        assert "in use by another run" in capsys.readouterr().err
    # The killed run's lock went with its process: the folder can be resumed at once.
    assert main(["--resume", str(out), "--quiet"]) == 0
    assert read(out)["epochs_run"] == 2


# ----- checkpoints are verified -----
@pytest.fixture(scope="module")
def finished_runs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, dim in (("dim8", "8"), ("dim16", "16")):
        args = train_args(data_root, root / name, "lightgcn", "--epochs", "1")
        assert main([*args, "--embedding_dim", dim]) == 0
    return root


def _resume_error(folder: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["--resume", str(folder), "--quiet"]) == 2
    return capsys.readouterr().err


def test_checkpoint_with_flipped_byte_refused(finished_runs: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"
    shutil.copytree(finished_runs / "dim8", folder)
    raw = bytearray((folder / "checkpoint.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (folder / "checkpoint.pt").write_bytes(bytes(raw))
    err = _resume_error(folder, capsys)
    assert err == (
        f"error: {folder / 'checkpoint.pt'}: checksum mismatch: its {len(raw) - 94} bytes after "
        "the header differ from what was written (the file was cut short or altered); it cannot "
        "be resumed from\n"
    )


def test_checkpoint_of_random_bytes_refused(finished_runs: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"
    shutil.copytree(finished_runs / "dim8", folder)
    (folder / "checkpoint.pt").write_bytes(os.urandom(4096))
    assert _resume_error(folder, capsys) == (
        f"error: {folder / 'checkpoint.pt'}: not a checkpoint file written by this version of "
        "pyg_dhmrec (it does not start with the header line pyg_dhmrec checkpoint "
        "sha256:<sha256>); it cannot be resumed from\n"
    )


def test_checkpoint_of_other_model_size_refused(
    finished_runs: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(finished_runs / "dim16", folder)
    shutil.copy(finished_runs / "dim8" / "checkpoint.pt", folder / "checkpoint.pt")
    err = _resume_error(folder, capsys)
    assert err.startswith(
        f"error: {folder / 'checkpoint.pt'}: does not fit the model and optimizer built from the "
        "run's config.json (Error(s) in loading state_dict for LightGCN:"
    ), err
    assert "size mismatch" in err and "torch.Size([60, 8])" in err


def test_checkpoint_of_another_model_with_the_same_parameters_refused(
    finished_runs: Path, tmp_path: Path, capsys
) -> None:
    # BPR has LightGCN's parameter names and shapes: only the saved class tells them apart
    folder = tmp_path / "run"
    shutil.copytree(finished_runs / "dim8", folder)
    config = json.loads((folder / "config.json").read_text())
    del config["num_ui_layers"]  # LightGCN's only key that BPR lacks
    (folder / "config.json").write_text(json.dumps({**config, "model": "bpr"}))
    (folder / "results.json").unlink()  # an unfinished run, which resume trains on
    err = _resume_error(folder, capsys)
    assert err == (
        f"error: {folder / 'checkpoint.pt'}: saved by a LightGCN model, and the run's "
        "config.json now builds BPR; resume with the model it was saved by, or start a new run\n"
    ), err


def test_model_key_newer_than_the_run_takes_its_default(
    finished_runs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a run saved before a model option existed (FREEDOM's finetune_features) still resumes
    folder = tmp_path / "run"
    shutil.copytree(finished_runs / "dim8", folder)
    config = json.loads((folder / "config.json").read_text())
    del config["reg_weight"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "results.json").unlink()
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.experiment"):
        assert main(["--resume", str(folder), "--quiet"]) == 0
    assert any(
        "lacks the model or plug-in key(s) reg_weight, newer than the run; resumed with the "
        "default(s) reg_weight=0.0001" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_run_stopped_before_training_does_not_claim_the_folder(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    # Fails on the data check, after config.json is written: nothing was trained.
    assert main(train_args(data_root, out, "dhmrec", "--knn_k", "40")) == 2
    assert "key 'knn_k' must be in [1, 39]" in capsys.readouterr().err
    assert main(train_args(data_root, out, "dhmrec", "--epochs", "1")) == 0  # the fixed run
    assert json.loads((out / "config.json").read_text())["knn_k"] == 3


def test_resume_on_changed_data_files_refused(
    finished_runs: Path, data_root: Path, tmp_path: Path, capsys, caplog
) -> None:
    # the synthetic files as a plain dataset folder of one's own (no generator settings)
    shop = tmp_path / "data" / "shop"
    shop.mkdir(parents=True)
    for name in ("image_feat.npy", "text_feat.npy"):
        shutil.copy(data_root / "synthetic" / name, shop / name)
    inter = (data_root / "synthetic" / "synthetic.inter").read_text()
    (shop / "shop.inter").write_text(inter)
    folder = tmp_path / "run"
    args = ["--model", "lightgcn", "--dataset", str(shop), "--output", str(folder)]
    assert main([*args, "--epochs", "1", "--quiet", "--baseline", "null"]) == 0
    assert main(["--resume", str(folder), "--quiet"]) == 0  # the same files: resumed
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.experiment"):
        assert main(["recommend", "--run", str(folder), "--users", "0", "--k", "3"]) == 0
    assert "changed since" not in caplog.text
    lines = inter.splitlines(keepends=True)
    lines[1] = lines[1][:-2] + ("1\n" if lines[1].endswith("0\n") else "0\n")  # one label moved
    (shop / "shop.inter").write_text("".join(lines))
    err = _resume_error(folder, capsys)
    assert err.startswith(
        f"error: {folder / 'checkpoint.pt'}: saved while training on other data: the files of "
        "dataset 'shop' changed since (fingerprint "
    ), err
    assert err.endswith("restore them to resume, or start a new run in another folder\n")
    # a finished run read back on the changed files says so
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.experiment"):
        assert main(["recommend", "--run", str(folder), "--users", "0", "--k", "3"]) == 0
    assert "the files of dataset 'shop' changed since this run trained" in caplog.text
