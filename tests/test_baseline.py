"""The ``baseline`` key: after a run, the same command trains the baseline model on the same
data, seed and protocol into ``<output>/baseline-<model>/`` and prints and stores the
comparison (ratios of test R@20 and N@20, paired t-test of per-user R@20)."""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from pyg_dhmrec.cli import main
from pyg_dhmrec.config import baseline_config, load_config, load_yaml
from pyg_dhmrec.experiment import compare_runs

REPO = Path(__file__).resolve().parent.parent
TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"


def _argv(data_root: Path, output: Path, *extra: str, model: str = "bpr") -> list[str]:
    return [
        *("--model", model, "--dataset", "synthetic", "--data-root", str(data_root)),
        *("--output", str(output), "--synthetic", TINY, "--topk", "[10,20]"),
        *("--epochs", "2", "--device", "cpu", "--quiet", *extra),
    ]


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _main(argv: list[str]) -> list[str]:
    """Run the command; its stdout lines."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue().splitlines()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def twice(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same command (BPR on the synthetic dataset, whose default baseline is LightGCN) run
    twice into one folder, with the baseline's files between the two."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    folder = out / "baseline-lightgcn"
    first_stdout = _main(_argv(data_root, out))
    first = _read(out / "results.json")
    files = {n: (folder / n).read_bytes() for n in ("results.json", "train.log", "best.pt")}
    mtimes = {n: (folder / n).stat().st_mtime_ns for n in files}
    second_stdout = _main(_argv(data_root, out))
    return {
        "out": out,
        "folder": folder,
        "first": first,
        "first_stdout": first_stdout,
        "second": _read(out / "results.json"),
        "second_stdout": second_stdout,
        "files": files,
        "mtimes": mtimes,
    }


def test_comparison_is_printed_and_stored(twice: dict) -> None:
    run, folder = twice["first"], twice["folder"]
    base = _read(folder / "results.json")
    assert (base["model"], base["dataset"]) == ("lightgcn", "synthetic")
    c = run["baseline"]
    assert (c["model"], c["folder"]) == ("lightgcn", str(folder))
    assert c["test"] == base["test"]
    for metric in ("recall@20", "ndcg@20"):
        assert c["ratio"][metric] == run["test"][metric] / base["test"][metric]
    r20, n20 = c["ratio"]["recall@20"], c["ratio"]["ndcg@20"]
    t, p = c["paired_t_test"]["t"], c["paired_t_test"]["p"]
    expected = (
        f"bpr vs lightgcn (seed 2024): R@20 {run['test']['recall@20']:.4f} vs "
        f"{base['test']['recall@20']:.4f} ({r20:.2f}x), N@20 {run['test']['ndcg@20']:.4f} vs "
        f"{base['test']['ndcg@20']:.4f} ({n20:.2f}x), paired t-test of per-user R@20: "
        f"t = {t:.2f}, p = {p:.2g}"
    )
    assert c["line"] == expected
    *_, line, summary = twice["first_stdout"]  # the comparison, then the JSON summary line
    assert line == expected
    summary = json.loads(summary)
    assert summary["baseline"]["ratio"] == {"recall@20": round(r20, 4), "ndcg@20": round(n20, 4)}
    assert (summary["baseline"]["t"], summary["baseline"]["p"]) == (round(t, 4), p)


def test_paired_t_is_compare_runs_of_the_two_folders(twice: dict) -> None:
    paired = twice["first"]["baseline"]["paired_t_test"]
    assert paired == compare_runs(twice["out"], twice["folder"])
    assert paired["mean_a"] == pytest.approx(twice["first"]["test"]["recall@20"])


def test_baseline_has_the_run_protocol_and_its_own_settings(twice: dict) -> None:
    run = twice["first"]["config"]
    base = _read(twice["folder"] / "config.json")
    for key in ("seed", "epochs", "patience", "topk", "synthetic", "data_root", "device"):
        assert base[key] == run[key], key
    lightgcn = load_yaml(REPO / "configs" / "models" / "lightgcn.yaml")
    assert base["reg_weight"] == lightgcn["reg_weight"] != run["reg_weight"]  # BPR's own
    assert base["baseline"] is None and base["plugin"] is None


def test_second_invocation_reuses_the_finished_baseline(twice: dict) -> None:
    folder = twice["folder"]
    for name, content in twice["files"].items():  # not retrained: its files untouched
        assert (folder / name).read_bytes() == content, name
        assert (folder / name).stat().st_mtime_ns == twice["mtimes"][name], name
    assert twice["second"]["baseline"] == twice["first"]["baseline"]
    assert twice["second"]["test"] == twice["first"]["test"]  # the run itself retrained
    assert twice["second_stdout"] == twice["first_stdout"]


def test_model_keys_and_optimiser_settings_do_not_reach_the_baseline() -> None:
    run = load_config(
        "lightgcn",
        "synthetic",
        {"epochs": 3, "seed": 5, "num_ui_layers": 3, "reg_weight": 0.5, "learning_rate": 0.01}
        | {"baseline": "bpr"},
    )
    base = baseline_config(run)
    assert (base["model"], base["dataset"]) == ("bpr", "synthetic")
    assert (base["epochs"], base["seed"]) == (3, 5)
    assert base["synthetic"] == run["synthetic"] and base["modalities"] == run["modalities"]
    assert "num_ui_layers" not in base  # LightGCN's key
    assert base["reg_weight"] == 0.001  # configs/models/bpr.yaml, not the run's 0.5
    assert base["learning_rate"] == 0.001  # its own optimiser setting (overall.yaml)
    assert base["baseline"] is None


def test_unknown_baseline_exit_2(data_root: Path, tmp_path: Path, capsys) -> None:
    assert main(_argv(data_root, tmp_path / "run", "--baseline", "lightgnc")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: key 'baseline' must be null or a registered model: one of ")
    assert "bpr, " in err and "lightgcn" in err
    assert not (tmp_path / "run").exists()


def test_baseline_without_recall_at_20_exit_2(data_root: Path, tmp_path: Path, capsys) -> None:
    argv = _argv(data_root, tmp_path / "run")
    argv[argv.index("--topk") + 1] = "[10]"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "key 'baseline' (lightgcn) compares test recall@20 and ndcg@20" in err, err
    assert "--baseline null" in err
    assert not (tmp_path / "run").exists()


def test_baseline_null_trains_no_baseline(data_root: Path, tmp_path: Path) -> None:
    lines = _main(_argv(data_root, tmp_path / "run", "--baseline", "null"))
    assert "baseline" not in _read(tmp_path / "run" / "results.json")
    assert not list((tmp_path / "run").glob("baseline-*"))
    assert "baseline" not in json.loads(lines[-1]) and len(lines) == 1


def test_baseline_that_is_the_model_is_skipped(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pyg_dhmrec"):
        _main(_argv(data_root, tmp_path / "run", model="lightgcn"))
    assert "baseline lightgcn is the run's model: no comparison" in caplog.text
    assert "baseline" not in _read(tmp_path / "run" / "results.json")
    assert not list((tmp_path / "run").glob("baseline-*"))


def test_baseline_under_torchrun_refused_before_training(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(_argv(data_root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "baseline: lightgcn trains in one process after the run, not under torchrun" in err
    assert "--baseline null" in err
    assert not (tmp_path / "run").exists()


def test_resume_takes_the_stored_baseline(twice: dict, capsys) -> None:
    assert main(["--resume", str(twice["out"]), "--baseline", "null"]) == 2
    assert "drop --baseline" in capsys.readouterr().err


def test_seeds_one_baseline_per_seed(data_root: Path, tmp_path: Path) -> None:
    lines = _main(_argv(data_root, tmp_path / "runs", "--seeds", "2"))
    summary = _read(tmp_path / "runs" / "seeds.json")
    assert [c["folder"] for c in summary["baseline"]] == [
        str(tmp_path / "runs" / f"seed={s}" / "baseline-lightgcn") for s in (2024, 2025)
    ]
    for seed, c in zip((2024, 2025), summary["baseline"]):
        assert _read(Path(c["folder"]) / "config.json")["seed"] == seed
        assert c == _read(tmp_path / "runs" / f"seed={seed}" / "results.json")["baseline"]
        assert c["line"] in lines


def test_grid_points_get_no_baseline(data_root: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("reg_weight: [0.001]\n", encoding="utf-8")
    _main(_argv(data_root, tmp_path / "runs", "--grid", str(grid)))
    point = tmp_path / "runs" / "reg_weight=0.001"
    assert _read(point / "config.json")["baseline"] is None
    assert not list(point.glob("baseline-*"))
