"""``benchmarks/speed.py``'s model specs: per-model options beside the shared ones."""

from __future__ import annotations

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
