"""``benchmarks/speed.py``'s model specs: per-model options beside the shared ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

speed = load_benchmark("speed")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("lightgcn", ("lightgcn", [])),
        ("dhmrec:kl_items=1024", ("dhmrec", ["--kl_items", "1024"])),
        (
            "dhmrec:kl_items=512,gamma_kl=3.0",
            ("dhmrec", ["--kl_items", "512", "--gamma_kl", "3.0"]),
        ),
        ("freedom:lambda_coeff=[0.9]", ("freedom", ["--lambda_coeff", "[0.9]"])),
    ],
)
def test_model_spec(spec: str, expected: tuple) -> None:
    assert speed.model_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["dhmrec:", "dhmrec:kl_items", "dhmrec:=3", ":kl_items=3", "dhmrec:a=1,b"]
)
def test_bad_model_spec(spec: str) -> None:
    with pytest.raises(SystemExit, match=f"--models: '{spec}' is not name or name:key=value"):
        speed.model_spec(spec)


def test_fixed_seed_metrics_checks_every_name_before_running(capsys) -> None:
    import argparse

    fixed = load_benchmark("fixed_seed_metrics")
    parser = argparse.ArgumentParser(prog="fixed_seed_metrics.py")
    for names, message in (
        (["bpr", "bpr"], "--models lists bpr more than once"),
        (["bpr", "nope"], "--models nope: unknown model 'nope'"),
        (["lightgcn+nope"], "--models lightgcn+nope: unknown plugin 'nope'; available: mrdib"),
    ):
        with pytest.raises(SystemExit):
            fixed.check_names(parser, names)
        assert message in capsys.readouterr().err
    fixed.check_names(parser, ["bpr", "lightgcn+mrdib"])


def test_run_model_reads_what_the_child_wrote_from_any_folder(tmp_path, monkeypatch) -> None:
    # the child run.py resolves --output against its own working folder: with another one
    # than this process's (the checkout's root, before), a relative folder was read elsewhere
    import argparse
    import json

    def fake_run(cmd, stdout=None, stderr=None, cwd=None):  # noqa: ANN001
        output = cmd[cmd.index("--output") + 1]
        folder = (Path(cwd) if cwd else Path.cwd()) / output
        folder.mkdir(parents=True, exist_ok=True)
        timing = {"train_s_per_epoch": 1.5, "eval_s": 0.2, "test_eval_s": 0.3}
        results = {"timing": timing, "history": [{"eval_s": 0.2}], "peak_rss_mb": 400}
        (folder / "results.json").write_text(json.dumps({**results, "environment": {}}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(speed.subprocess, "run", fake_run)
    args = argparse.Namespace(dataset="tiktok", epochs=1, device="cpu", data_root="data")
    figures = speed.run_model("lightgcn", Path("out") / "lightgcn", args, [])
    assert figures["train_s_per_epoch"] == 1.5 and figures["run_eval_s"] == 0.2 + 0.3
    assert (tmp_path / "out" / "lightgcn" / "results.json").is_file()
