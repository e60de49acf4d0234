"""Run lifecycle faults: kills mid-epoch and mid-write, resumes in a row, a full disk, resumes
elsewhere, older checkpoints, early stopping across a resume, a rank dying under torchrun, and
repeatability across processes. Faults are injected by event (kill points, patched writes)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kill_points import stopped_at

from pyg_dhmrec import atomic_files
from pyg_dhmrec.atomic_files import (
    WriteFailed,
    atomic_write,
    read_torch_checked,
    write_json,
    write_torch_checked,
)
from pyg_dhmrec.cli import main
from pyg_dhmrec.distributed import peer_failure
from pyg_dhmrec.train import CHECKPOINT_KIND, Trainer, read_checkpoint

REPO = Path(__file__).resolve().parent.parent
KILL_POINTS = REPO / "tests" / "kill_points.py"
TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"
#: 658 train interactions: 3 steps an epoch
COMMON = {"--epochs": "5", "--patience": "50", "--batch_size": "256", "--seed": "3"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def train_args(data_root: Path, output: Path, *extra: str, model: str = "lightgcn") -> list[str]:
    """``run.py`` options of a tiny run; ``extra`` pairs (``--epochs 2``) replace COMMON's."""
    options = {**COMMON, **dict(zip(extra[::2], extra[1::2], strict=True))}
    knn = ["--knn_k", "3"] if model == "dhmrec" else []
    return [
        *("--model", model, "--dataset", "synthetic", "--data-root", str(data_root)),
        *("--output", str(output), "--synthetic", TINY, "--topk", "[10,20]"),
        *("--device", "cpu", "--quiet", "--baseline", "null", *knn),
        *(word for pair in options.items() for word in pair),
    ]


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted LightGCN run (it also builds the data folder)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(train_args(data_root, out)) == 0
    return read(out)


def read(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))


def outcome(results: dict) -> tuple:
    """What must not change between an interrupted and an uninterrupted run."""
    history = [
        {k: v for k, v in h.items() if k not in ("train_s", "train_cpu_s", "eval_s")}
        for h in results["history"]
    ]
    return results["test"], results["valid"], results["best_epoch"], results["epochs_run"], history


def kill_at(point: str, args: list[str], tmp_path: Path, name: str = "marker") -> None:
    """Run ``run.py args`` in a process stopped at ``point``, then SIGKILL it."""
    with stopped_at(point, tmp_path / name, args):
        pass


def saved_epoch(folder: Path) -> int:
    return read_checkpoint(folder / "checkpoint.pt")["progress"]["epoch"]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


# ---------------------------------------------------------------- kills


def test_kill_mid_epoch_resumes_to_the_uninterrupted_run(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    # DHMRec prunes its graph from torch's RNG each epoch: the redone epoch must draw the same
    full = tmp_path / "full"
    assert main(train_args(data_root, full, model="dhmrec")) == 0
    run = tmp_path / "run"
    kill_at(
        "pyg_dhmrec.train:Trainer.train_step@8",
        train_args(data_root, run, model="dhmrec"),
        tmp_path,
    )
    assert saved_epoch(run) == 2  # killed in epoch 3's second step
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert outcome(read(run)) == outcome(read(full))


def test_kill_mid_checkpoint_write_resumes_and_removes_the_temporary(
    data_root: Path, reference: dict, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    # torch.save's 3rd call is epoch 3's checkpoint body: stopped before its header and rename
    kill_at("torch:save@3", train_args(data_root, run), tmp_path)
    assert saved_epoch(run) == 2
    left = temporaries(run)
    assert len(left) == 1 and left[0].startswith(".checkpoint.pt."), left
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert outcome(read(run)) == outcome(reference)
    assert temporaries(run) == []  # the killed write's leftover (a checkpoint's size) is gone


def test_resume_killed_again_then_resumed_and_resume_of_a_finished_run(
    data_root: Path, reference: dict, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    kill_at("pyg_dhmrec.train:Trainer.save_checkpoint@1", train_args(data_root, run), tmp_path)
    assert saved_epoch(run) == 1
    # the resumed process saves epochs 2, 3, 4: killed after epoch 4
    point = "pyg_dhmrec.train:Trainer.save_checkpoint@3"
    kill_at(point, ["--resume", str(run), "--quiet"], tmp_path, "marker2")
    assert saved_epoch(run) == 4 and not (run / "results.json").exists()
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert outcome(read(run)) == outcome(reference)
    # a finished run resumed once more trains nothing and reports the same
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert outcome(read(run)) == outcome(reference)


def test_early_stop_at_the_patience_boundary_across_a_resume(
    data_root: Path, tmp_path: Path
) -> None:
    stop = ("--patience", "1", "--epochs", "30")
    full = tmp_path / "full"
    assert main(train_args(data_root, full, *stop)) == 0
    stopped = read(full)["epochs_run"]
    assert stopped < 30  # the premise: this run stops early
    for at in (stopped - 1, stopped):  # one evaluation before the stop, and the stop itself
        run = tmp_path / f"killed{at}"
        point = f"pyg_dhmrec.train:Trainer.save_checkpoint@{at}"
        kill_at(point, train_args(data_root, run, *stop), tmp_path, f"marker{at}")
        assert saved_epoch(run) == at
        assert main(["--resume", str(run), "--quiet"]) == 0
        assert outcome(read(run)) == outcome(read(full)), at


# ---------------------------------------------------------------- a full disk


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, name: str, calls: int) -> None:
    """Writes of ``name`` fail with ENOSPC from their ``calls``-th file on, inside
    ``torch.save``/``json`` as a full disk does (torch.save turns it into a RuntimeError)."""
    seen = {"n": 0}
    original = atomic_files.atomic_write

    def atomic_write(path, write):
        if Path(path).name == name:
            seen["n"] += 1
            if seen["n"] >= calls:

                def full(f):
                    f.write(b"part")
                    try:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    except OSError:
                        raise RuntimeError("unexpected pos 11264 vs 11158") from None

                return original(path, full)
        return original(path, write)

    monkeypatch.setattr(atomic_files, "atomic_write", atomic_write)


def test_disk_full_at_a_checkpoint_keeps_the_last_and_resumes(
    data_root: Path, reference: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    _disk_full_after(monkeypatch, "checkpoint.pt", 3)
    assert main(train_args(data_root, run)) == 2
    path = run / "checkpoint.pt"
    assert capsys.readouterr().err == (
        f"error: {path}: cannot be written (No space left on device); the checkpoint of epoch 2 "
        f"is kept in {path}; make room on its file system and continue with --resume {run}\n"
    )
    assert saved_epoch(run) == 2 and temporaries(run) == []
    monkeypatch.undo()  # room again
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert outcome(read(run)) == outcome(reference)


def test_disk_full_at_results_names_the_resume(
    data_root: Path, reference: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    _disk_full_after(monkeypatch, "results.json", 1)
    assert main(train_args(data_root, run)) == 2
    assert capsys.readouterr().err == (
        f"error: {run / 'results.json'}: cannot be written (No space left on device); "
        f"{run / 'checkpoint.pt'} holds the trained run: make room on its file system and "
        f"continue with --resume {run} (only the test is repeated)\n"
    )
    assert not (run / "results.json").exists() and temporaries(run) == []
    monkeypatch.undo()
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert outcome(read(run)) == outcome(reference)


def test_atomic_write_reports_the_system_error_behind_a_failed_write(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"v": 1})

    def wrapped(f) -> None:  # torch.save's way: a RuntimeError raised while handling it
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError:
            raise RuntimeError("PytorchStreamWriter failed writing file") from None

    with pytest.raises(WriteFailed) as info:
        atomic_write(path, wrapped)
    assert isinstance(info.value, OSError) and info.value.errno == errno.EDQUOT
    assert str(info.value) == (
        f"{path}: cannot be written ({os.strerror(errno.EDQUOT)}); the previous file is kept; "
        "make room on its file system"
    )
    assert json.loads(path.read_text()) == {"v": 1} and temporaries(tmp_path) == []

    def bug(f) -> None:  # not the system's refusal: raised as it is
        raise RuntimeError("a bug in the writer")

    with pytest.raises(RuntimeError, match="a bug in the writer"):
        atomic_write(path, bug)


# ---------------------------------------------------------------- resuming elsewhere


def test_resume_with_another_thread_count_warns(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(train_args(data_root, run, "--epochs", "1")) == 0
        with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.train"):
            assert main(["--resume", str(run), "--quiet"]) == 0  # the same: no warning
        assert "round in another order" not in caplog.text
        torch.set_num_threads(2)
        with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.train"):
            assert main(["--resume", str(run), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (
        f"{run / 'checkpoint.pt'}: saved on cpu with 1 torch thread(s), resumed on cpu with 2 "
        "torch thread(s): floating-point sums round in another order" in caplog.text
    ), caplog.text


def test_checkpoint_of_an_older_layout_is_refused_naming_what_to_do(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(train_args(data_root, run, "--epochs", "1")) == 0
    path = run / "checkpoint.pt"
    payload = read_torch_checked(path, CHECKPOINT_KIND)
    write_torch_checked(path, {**payload, "version": 1}, CHECKPOINT_KIND)
    capsys.readouterr()
    assert main(["--resume", str(run), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: a checkpoint of layout version 1, this pyg_dhmrec reads version 2; "
        "resume it with the pyg_dhmrec that wrote it, or start a new run in another folder\n"
    )


def test_run_state_that_does_not_fit_the_config_names_the_checkpoint(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(train_args(data_root, run, "--epochs", "1")) == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "early_stop_metric": "ndcg@10"}))
    capsys.readouterr()
    assert main(["--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {run / 'checkpoint.pt'}: its run state does not fit the run's config.json "
        "(early stopping monitored 'recall@20', this run monitors 'ndcg@10'); resume with the "
        "config.json it was saved with, or start a new run in another folder\n"
    ), err


def test_peer_failure_tells_collective_errors_from_the_steps_own() -> None:
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer.")
    assert peer_failure(gloo) == str(gloo)
    assert peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_failure(ValueError("gloo")) is None


def test_a_broken_collective_is_an_error_line_naming_the_checkpoint(
    data_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    original = Trainer.train_epoch

    def train_epoch(self: Trainer, epoch: int) -> dict[str, float]:
        if epoch == 3:  # as rank 0 of two sees rank 1 die inside the step's all-reduce
            self.dist = SimpleNamespace(rank=0, world_size=2)
            raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Connection reset by peer")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    run = tmp_path / "run"
    assert main(train_args(data_root, run)) == 2
    assert capsys.readouterr().err == (
        "error: rank 0: a collective with the other ranks failed ([gloo/transport/tcp/pair.cc:"
        "537] Connection reset by peer); another rank stopped or lost contact (its own output "
        f"says why); the checkpoint of epoch 2 is kept in {run / 'checkpoint.pt'}: continue "
        f"with torchrun ... run.py --resume {run}\n"
    )
    assert saved_epoch(run) == 2


# ---------------------------------------------------------------- repeatability


@pytest.mark.parametrize("model", ["freedom", "lgmrec", "bm3"])
def test_same_seed_same_results_in_separate_processes(
    data_root: Path, tmp_path: Path, model: str
) -> None:
    """Dropout, edge sampling and hashing of names (PYTHONHASHSEED differs) repeat exactly."""
    results = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        args = train_args(data_root, out, "--epochs", "2", "--seed", "0", model=model)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, str(REPO / "run.py"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(read(out))
    assert outcome(results[0]) == outcome(results[1])
    assert results[0]["seed"] == 0


# ---------------------------------------------------------------- torchrun

DIE = """\
import os, signal, sys
sys.path.insert(0, {repo!r})
from pyg_dhmrec.cli import main
from pyg_dhmrec.train import Trainer
original = Trainer.train_step

def train_step(self, batch):  # rank 1 dies (SIGKILL) in epoch 3's first step
    if os.environ["RANK"] == "1" and self.epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, batch)

Trainer.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_killed_under_torchrun_stops_the_job_cleanly_and_resumes(
    data_root: Path, tmp_path: Path
) -> None:
    from test_distributed import run_torchrun

    common = train_args(data_root, tmp_path / "full", "--epochs", "4")
    done = run_torchrun(str(REPO / "run.py"), *common)
    assert done.returncode == 0, done.stderr[-3000:]
    script = tmp_path / "die.py"
    script.write_text(DIE.format(repo=str(REPO)))
    run = tmp_path / "run"
    died = run_torchrun(str(script), *train_args(data_root, run, "--epochs", "4"))
    assert died.returncode != 0
    # the surviving rank 0 ends with an error line (or torchrun's SIGTERM), not a traceback
    assert "[rank0]: Traceback" not in died.stderr, died.stderr[-3000:]
    assert saved_epoch(run) == 2 and not (run / "results.json").exists()
    resumed = run_torchrun(str(REPO / "run.py"), "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outcome(read(run)) == outcome(read(tmp_path / "full"))
