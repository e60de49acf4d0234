"""Training on two CPU ranks (gloo, loopback): the same step, the same metrics, exact resume
and a failing rank ending the job (issue 20). Ranks are started by ``torch.multiprocessing``
or by torchrun; the tests wait on process exit, with a generous hang guard only."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import TRAIN, one_step, toy_data
from kill_points import wait_for_marker

from pyg_dhmrec.cli import main
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.sampler import BPRSampler
from pyg_dhmrec.distributed import DistributedError, ShardedBPRSampler
from pyg_dhmrec.train import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
HANG_GUARD_S = 600  # only stops a hung test; no timing expectation
TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, port: int | None = None) -> list[str]:
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"),
        *("--nproc-per-node", "2", "--master-addr", "127.0.0.1"),
        *("--master-port", str(port or free_port()), *args),
    ]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYG_DHMREC_DIST_TIMEOUT_S="300")


def run_torchrun(*args: str) -> subprocess.CompletedProcess:
    """Two CPU ranks of ``args`` under torchrun, to their end (output captured as text)."""
    return subprocess.run(
        torchrun(*args),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,  # only stops a hung job
    )


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's ranks (its children, each in a session of its own), then torchrun."""
    # Every thread's children: torchrun may start its workers from a thread other than the main one.
    pids = [
        int(p)
        for children in Path(f"/proc/{proc.pid}/task").glob("*/children")
        for p in children.read_text().split()
    ]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    for pid in pids:  # reaped by init; wait until they are gone, so the run lock is free
        while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
            time.sleep(0.05)


def wait_until_unlocked(lock: Path) -> None:
    """Wait until no process holds ``lock`` (flock): a SIGKILLed rank's locks are released when
    the kernel has closed its files, which may trail the process's disappearance from /proc."""
    waited = 0.0
    with open(lock, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert waited < HANG_GUARD_S, f"{lock} still held after the job was killed"
                time.sleep(0.05)
                waited += 0.05
                continue
            fcntl.flock(f, fcntl.LOCK_UN)
            return


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def train_args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return [
        *("--model", "lightgcn", "--dataset", "synthetic", "--data-root", str(data_root)),
        *("--output", str(output), "--synthetic", TINY, "--topk", "[10,20]"),
        *("--device", "cpu", "--quiet", "--epochs", "4", "--patience", "50"),
        *("--batch_size", "256", "--seed", "3", *extra),
    ]


def checkpoint_epoch(path: Path) -> int:
    try:
        return read_checkpoint(path)["progress"]["epoch"]
    except (CheckpointError, FileNotFoundError):  # not written yet
        return 0


def read(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def without_timings(history: list) -> list:
    return [
        {k: v for k, v in h.items() if k not in ("train_s", "train_cpu_s", "eval_s")}
        for h in history
    ]


# ---------------------------------------------------------------- sharded sampling


def test_shards_split_each_global_batch_disjointly() -> None:
    data = toy_data()
    edges, args = data[RATES].edge_index, (40, 30, 64)
    full = list(BPRSampler(edges, *args, seed=5))
    shards = [list(ShardedBPRSampler(edges, *args, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(full)
    for whole, a, b in zip(full, *shards, strict=True):
        assert len(a) == len(b) == len(whole) // 2
        assert torch.equal(torch.cat([a.user, b.user]), whole.user)
        assert torch.equal(torch.cat([a.pos_item, b.pos_item]), whole.pos_item)
    # each rank's negatives come from its own stream
    assert not torch.equal(shards[0][0].neg_item, shards[1][0].neg_item[: len(shards[0][0])])


def test_shards_draw_negatives_from_trained_items_when_asked() -> None:
    data = toy_data()
    edges = data[RATES].edge_index
    edges = edges[:, edges[1] >= 5]  # items 0-4 lose their train interactions
    for rank in (0, 1):
        shard = ShardedBPRSampler(
            edges, 40, 30, 64, seed=5, rank=rank, world_size=2, negative_items="train"
        )
        batches = list(shard)  # one epoch
        users = torch.cat([b.user for b in batches])
        negatives = torch.cat([b.neg_item for b in batches])
        assert negatives.min() >= 5 and not shard.is_train(users, negatives).any()


def test_batch_size_not_divisible_by_ranks_is_refused() -> None:
    data = toy_data()
    with pytest.raises(DistributedError, match="batch_size 63 is not divisible by the 2 ranks"):
        ShardedBPRSampler(data[RATES].edge_index, 40, 30, 63, seed=0, rank=0, world_size=2)


# ---------------------------------------------------------------- two spawned ranks


#: (model, plugin, config keys, whether every loss part is a mean over the batch's positives).
#: MMRec's embedding-norm regulariser (LightGCN's ``reg``: a norm of the batch's rows, not a
#: mean) and MRdIB's batch-statistic terms are not, so two ranks optimise the mean of each
#: half's term instead: LightGCN is compared with ``reg_weight: 0``, and FREEDOM + MRdIB on
#: evaluation and on replicas that stay identical.
VARIANTS = [
    ("lightgcn", None, {"reg_weight": 0.0}, True),
    ("freedom", None, {}, True),
    ("freedom", "mrdib", {}, False),
    # its own phase (the denoisers, outside DDP, the same on every rank) and generated graphs
    ("diffmm", None, {"denoiser_dims": [16], "diffusion_batch_size": 16}, True),
]


def test_one_step_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    """Each rank takes half of the global batch; DDP's averaged gradients, the parameters
    after the Adam step and the sharded evaluation equal those of one process (LightGCN;
    FREEDOM, whose pruned graph each rank draws from the common stream; FREEDOM + MRdIB;
    DiffMM, whose diffusion phase every rank runs whole)."""
    variants = [v[:3] for v in VARIANTS]
    ctx = mp.start_processes(
        one_step,
        args=(2, free_port(), variants, str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    waited = 0
    while not ctx.join(timeout=5):  # raises when a rank fails
        waited += 5
        assert waited < HANG_GUARD_S, "ranks hang"
    singles = one_step(0, 1, 0, variants, str(tmp_path))
    assert singles is not None
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for variant, rank0, rank1, single in zip(VARIANTS, *ranks, singles, strict=True):
        for got in (rank0, rank1):
            # evaluation: exactly the single process's metrics and per-user values
            assert got["valid"] == single["valid"], variant
            assert got["test"] == single["test"], variant
            for key, values in single["per_user"].items():
                assert torch.equal(got["per_user"][key], values), (variant, key)
        # the replicas stay identical: the same averaged gradient, the same step
        assert rank0["grads"].keys() == single["grads"].keys() and single["grads"]
        for name, param in rank0["params"].items():
            assert torch.equal(rank1["params"][name], param), (variant, name)
        if not variant[3]:
            continue
        # training: one process, to float tolerance (the gradient is summed in another order)
        for name, grad in single["grads"].items():
            torch.testing.assert_close(rank0["grads"][name], grad, rtol=1e-4, atol=1e-7)
        for name, param in single["params"].items():
            torch.testing.assert_close(rank0["params"][name], param, rtol=1e-5, atol=1e-6)
        for part, value in single["losses"].items():
            assert rank0["losses"][part] == pytest.approx(value, rel=1e-5, abs=1e-7), part
    assert TRAIN["eval_batch_size"] < 40 // 4  # each rank scored several user chunks


# ---------------------------------------------------------------- torchrun runs of run.py


def test_killed_two_rank_run_resumes_to_the_uninterrupted_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_root = tmp_path / "data"
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_py = str(REPO / "run.py")
    done = run_torchrun(run_py, *train_args(data_root, full))
    assert done.returncode == 0, done.stderr[-3000:]
    reference = read(full)
    assert (reference["world_size"], reference["backend"]) == (2, "gloo")
    assert len(reference["peak_rss_mb_per_rank"]) == 2
    log_text = (full / "train.log").read_text(encoding="utf-8")
    assert log_text.count(" training lightgcn on ") == 1  # rank 0 alone writes the log

    marker = tmp_path / "at_kill_point"
    point = "pyg_dhmrec.train:Trainer.save_checkpoint@2"  # both ranks stop after epoch 2
    cmd = torchrun(str(TESTS / "kill_points.py"), point, str(marker))
    proc = subprocess.Popen(
        cmd + train_args(data_root, killed),
        cwd=REPO,
        env=env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_marker(marker, proc, HANG_GUARD_S)  # one rank is there
        waited = 0.0
        while checkpoint_epoch(killed / "checkpoint.pt") < 2:  # rank 0 wrote epoch 2
            assert proc.poll() is None and waited < HANG_GUARD_S, "rank 0 never saved epoch 2"
            time.sleep(0.05)
            waited += 0.05
    finally:
        kill_job(proc)
    payload = read_checkpoint(killed / "checkpoint.pt")
    assert payload["progress"]["epoch"] == 2 and payload["world_size"] == 2
    assert len(payload["ranks"]) == 2 and not (killed / "results.json").exists()
    assert not torch.equal(
        payload["ranks"][0]["sampler"]["neg_generator"],
        payload["ranks"][1]["sampler"]["neg_generator"],
    )

    # one process cannot continue a 2-rank checkpoint
    wait_until_unlocked(killed / "run.lock")
    assert main(["--resume", str(killed), "--quiet"]) == 2
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().err

    resumed_run = run_torchrun(run_py, "--resume", str(killed), "--quiet")
    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]
    resumed = read(killed)
    assert resumed["test"] == reference["test"]
    assert resumed["valid"] == reference["valid"]
    assert without_timings(resumed["history"]) == without_timings(reference["history"])
    assert torch.equal(
        torch.load(killed / "per_user_test.pt")["recall@20"],
        torch.load(full / "per_user_test.pt")["recall@20"],
    )


def test_a_failing_rank_ends_the_job_nonzero_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fail = (str(TESTS / "fail_rank.py"), "1", "3")  # rank 1 raises in epoch 3
    done = run_torchrun(*fail, *train_args(tmp_path / "data", run))
    assert done.returncode != 0
    assert "injected fault on rank 1 in epoch 3" in done.stderr
    assert read_checkpoint(run / "checkpoint.pt")["progress"]["epoch"] == 2
    assert not (run / "results.json").exists()
