"""Grids, seed repeats, paired comparison, plots, recommendations and exports via the CLI."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ttest_rel

from pyg_dhmrec.atomic_files import write_json
from pyg_dhmrec.cli import main
from pyg_dhmrec.config import CONFIG_DIR, ConfigError, available, load_config, merge
from pyg_dhmrec.experiment import (
    RunInUse,
    RunLock,
    expand_grid,
    load_grid,
    load_run,
    point_name,
    run_grid,
)
from pyg_dhmrec.models import MODELS, build_model, model_settings

TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def train_args(data_root: Path, output: Path, model: str = "lightgcn", *extra: str) -> list:
    knn = ["--knn_k", "3"] if model == "dhmrec" else []
    return [
        *("--model", model, "--dataset", "synthetic", "--data-root", str(data_root)),
        *("--output", str(output), "--synthetic", TINY, "--topk", "[10,20]"),
        *("--device", "cpu", "--quiet", "--epochs", "2", *knn, *extra),
    ]


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def grid(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("grid")
    grid_file = folder / "grid.yaml"
    grid_file.write_text("num_ui_layers: [1, 2]\nreg_weight: [0.001, 0.0001]\n")
    out = folder / "runs"
    assert main([*train_args(data_root, out), "--grid", str(grid_file)]) == 0
    return out


@pytest.fixture(scope="module")
def seeds(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seeds") / "runs"
    assert main([*train_args(data_root, out), "--seeds", "2", "--seed", "5"]) == 0
    return out


@pytest.fixture(scope="module")
def dhmrec_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dhmrec") / "run"
    assert main(train_args(data_root, out, "dhmrec")) == 0
    return out


def test_expand_grid_and_point_names() -> None:
    points = expand_grid({"a": [1, 2], "b": ["x"], "ablations": [["no_kl", "no_ii"]]})
    assert points == [
        {"a": 1, "b": "x", "ablations": ["no_kl", "no_ii"]},
        {"a": 2, "b": "x", "ablations": ["no_kl", "no_ii"]},
    ]
    assert point_name(points[0]) == "a=1_b=x_ablations=[no_kl,no_ii]"
    assert point_name({}) == "default"
    # benchmark.py's --grid strings: a repeated value would name one folder twice
    with pytest.raises(ConfigError, match=r"^--grid: the grid holds the point a=1_b=x more than"):
        expand_grid({"a": ["1", "2", "1"], "b": ["x"]}, "--grid")


def test_one_at_a_time_expansion() -> None:
    axes = {"design": "one_at_a_time", "a": [1, 2, 3], "b": ["x", "y"], "c": [0.5]}
    assert expand_grid(axes) == [
        {"a": 1, "b": "x", "c": 0.5},
        {"a": 2, "b": "x", "c": 0.5},
        {"a": 3, "b": "x", "c": 0.5},
        {"a": 1, "b": "y", "c": 0.5},
    ]
    # the default design is the product, also when named
    product = [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y")]
    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == product
    assert expand_grid({"design": "product", "a": [1, 2], "b": ["x", "y"]}) == product
    with pytest.raises(ConfigError, match="more than once"):
        expand_grid({"design": "one_at_a_time", "a": [1, 1]})


def test_grid_runs_every_point_and_selects_on_valid(grid: Path, capsys) -> None:
    summary = read(grid / "grid.json")
    names = [p["point"] for p in summary["points"]]
    assert names == [
        "num_ui_layers=1_reg_weight=0.001",
        "num_ui_layers=1_reg_weight=0.0001",
        "num_ui_layers=2_reg_weight=0.001",
        "num_ui_layers=2_reg_weight=0.0001",
    ]
    runs = [read(grid / n / "results.json") for n in names]
    assert [r["config"]["num_ui_layers"] for r in runs] == [1, 1, 2, 2]
    valid = [r["valid"]["recall@20"] for r in runs]
    best = valid.index(max(valid))
    assert summary["selected"] == names[best]
    assert summary["selected_test"] == runs[best]["test"]
    for row, r in zip(summary["points"], runs):
        assert row["valid_recall@20"] == r["valid"]["recall@20"]
        assert row["test_recall@20"] == r["test"]["recall@20"]
        assert row["test_ndcg@20"] == r["test"]["ndcg@20"]
        assert row["epochs_run"] == r["epochs_run"] == 2
    table = (grid / "grid.md").read_text()
    assert table.count("\n| num_ui_layers=") == 4
    assert f"selected on valid recall@20: {names[best]}" in table


def test_grid_resumes(grid: Path, data_root: Path) -> None:
    names = [p["point"] for p in read(grid / "grid.json")["points"]]
    finished = grid / names[0] / "results.json"
    mtime = finished.stat().st_mtime_ns
    interrupted = grid / names[1]
    before = read(interrupted / "results.json")
    (interrupted / "results.json").unlink()  # as if killed after its last checkpoint
    grid_file = grid.parent / "grid.yaml"
    assert main([*train_args(data_root, grid), "--grid", str(grid_file)]) == 0
    assert finished.stat().st_mtime_ns == mtime  # finished point skipped
    after = read(interrupted / "results.json")
    assert after["test"] == before["test"] and after["history"] == before["history"]


def test_grid_unknown_key_names_file(data_root: Path, tmp_path: Path, capsys) -> None:
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("num_layer: [1, 2]\n")
    assert main([*train_args(data_root, tmp_path / "o"), "--grid", str(grid_file)]) == 2
    err = capsys.readouterr().err
    assert re.match(rf"error: {re.escape(str(grid_file))}: unknown key 'num_layer'\.", err), err
    grid_file.write_text("num_ui_layers: 2\n")
    assert main([*train_args(data_root, tmp_path / "o"), "--grid", str(grid_file)]) == 2
    assert "key 'num_ui_layers' must map to a non-empty list of values, got 2" in (
        capsys.readouterr().err
    )


def test_seeds_mean_and_std(seeds: Path) -> None:
    summary = read(seeds / "seeds.json")
    assert summary["seeds"] == [5, 6]
    runs = [read(seeds / f"seed={s}" / "results.json") for s in (5, 6)]
    assert [r["seed"] for r in runs] == [5, 6]
    values = [r["test"]["recall@20"] for r in runs]
    stat = summary["test"]["recall@20"]
    assert stat["values"] == values
    assert stat["mean"] == pytest.approx(np.mean(values))
    assert stat["std"] == pytest.approx(np.std(values, ddof=1))


def test_compare_paired_t_test(seeds: Path, capsys) -> None:
    a, b = seeds / "seed=5", seeds / "seed=6"
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    pa, pb = torch.load(a / "per_user_test.pt"), torch.load(b / "per_user_test.pt")
    assert torch.equal(pa["users"], pb["users"])
    expected = ttest_rel(pa["recall@20"].double().numpy(), pb["recall@20"].double().numpy())
    assert result["t"] == pytest.approx(expected.statistic, nan_ok=True)
    assert result["p"] == pytest.approx(expected.pvalue, nan_ok=True)
    assert result["mean_a"] == pytest.approx(read(a / "results.json")["test"]["recall@20"])
    assert result["difference"] == pytest.approx(result["mean_a"] - result["mean_b"])
    assert "paired t = " in out and "A - B: " in out


def test_compare_of_identical_values_prints_strict_json(seeds: Path, tmp_path: Path, capsys):
    # t is undefined (0/0): the text says why, the JSON line holds null, not NaN
    copy = tmp_path / "copy"
    shutil.copytree(seeds / "seed=5", copy)
    assert main(["compare", str(seeds / "seed=5"), str(copy)]) == 0
    out = capsys.readouterr().out
    assert "paired t = nan (identical per-user values)" in out

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    result = json.loads(out.strip().splitlines()[-1], parse_constant=refuse)
    assert result["t"] is None and result["p"] is None and result["difference"] == 0.0


def test_compare_different_users_is_an_error(seeds: Path, tmp_path: Path, capsys) -> None:
    other_data = tmp_path / "data"
    small = TINY.replace("num_users: 60", "num_users: 50")
    args = train_args(other_data, tmp_path / "small")
    args[args.index("--synthetic") + 1] = small
    assert main(args) == 0
    assert main(["compare", str(seeds / "seed=5"), str(tmp_path / "small")]) == 2
    assert "evaluated different test users" in capsys.readouterr().err


def test_compare_runs_on_different_files_warns(seeds: Path, tmp_path: Path, caplog) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(seeds / "seed=5", a)
    shutil.copytree(seeds / "seed=6", b)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.experiment"):
        assert main(["compare", str(a), str(b)]) == 0
    assert "different files" not in caplog.text  # both trained on the same files
    results = json.loads((b / "results.json").read_text())
    results["data_fingerprint"] = "0" * 16  # as if b's dataset files had been edited
    (b / "results.json").write_text(json.dumps(results))
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.experiment"):
        assert main(["compare", str(a), str(b)]) == 0
    assert "trained on different files of dataset 'synthetic'" in caplog.text


def test_plot_curves_and_sweep(grid: Path, tmp_path: Path, capsys) -> None:
    run = grid / "num_ui_layers=1_reg_weight=0.001"
    assert main(["plot", "curves", str(run)]) == 0
    assert (run / "figures" / "curves.png").stat().st_size > 1000
    out = tmp_path / "figs"
    argv = ["plot", "sweep", str(grid), "--x", "num_ui_layers", "--lines", "reg_weight"]
    assert main([*argv, "--out", str(out)]) == 0
    assert (out / "sweep_num_ui_layers.png").stat().st_size > 1000
    assert main(["plot", "sweep", str(grid), "--out", str(out)]) == 0  # keys inferred
    assert f"written: {out / 'sweep_num_ui_layers.png'}" in capsys.readouterr().out


def test_plot_tsne_of_dhmrec(dhmrec_run: Path, tmp_path: Path) -> None:
    model, _, _ = load_run(dhmrec_run)
    parts = model.item_representations()
    assert set(parts) == {"id", "common", "specific_image", "specific_text"}
    assert all(v.shape == (40, 64) for v in parts.values())
    assert not model.training
    assert main(["plot", "tsne", str(dhmrec_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tsne.png").stat().st_size > 1000


def test_seeds_into_a_run_or_grid_folder_refused(
    grid: Path, data_root: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "grid"
    shutil.copytree(grid, folder)
    for target, marker in (
        (folder, "a grid (grid.json)"),
        (folder / "num_ui_layers=1_reg_weight=0.001", "a run (config.json)"),
    ):
        assert main([*train_args(data_root, target), "--seeds", "1"]) == 2
        assert f"--output {target}: holds {marker}; --seeds writes" in capsys.readouterr().err
        assert not list(target.glob("seed=*"))


def test_sweep_of_points_it_cannot_plot_is_named(grid: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    folder = tmp_path / "grid"
    shutil.copytree(grid, folder)
    out = ["--out", str(tmp_path / "png")]
    assert main(["plot", "sweep", str(folder), "--metric", "ndcg@7", *out]) == 2
    assert "has no valid ndcg@7; it has " in capsys.readouterr().err
    assert main(["plot", "sweep", str(folder), "--x", "synthetic", *out]) == 2
    assert "key 'synthetic' holds lists or mappings" in capsys.readouterr().err
    point = sorted(folder.glob("*/results.json"))[0]
    results = json.loads(point.read_text())
    point.write_text(json.dumps({**results, "dataset": "other"}))
    assert main(["plot", "sweep", str(folder), *out]) == 2
    assert "points are of more than one dataset (other, synthetic)" in capsys.readouterr().err
    point.write_text("{}")
    assert main(["plot", "sweep", str(folder), *out]) == 2
    assert f"{point}: lacks config, valid, test, model, dataset" in capsys.readouterr().err


def test_plot_without_matplotlib(
    grid: Path, monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    run = grid / "num_ui_layers=1_reg_weight=0.001"
    assert main(["plot", "curves", str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: plots need matplotlib, the optional 'plots' extra: ")
    assert 'pip install -e ".[plots]"' in err


def test_recommend_excludes_train_items(dhmrec_run: Path, capsys) -> None:
    assert main(["recommend", "--run", str(dhmrec_run), "--users", "0", "1", "2", "--k", "5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["user"] for r in rows] == [0, 1, 2]
    model, data, _ = load_run(dhmrec_run)
    train = data["user", "rates", "item"].edge_index
    scores = model.full_scores(torch.tensor([0, 1, 2]))
    for row in rows:
        seen = set(train[1, train[0] == row["user"]].tolist())
        assert len(row["items"]) == 5 and not seen & set(row["items"])
        assert row["scores"] == sorted(row["scores"], reverse=True)
        unseen = [i for i in range(40) if i not in seen]
        best = max(unseen, key=lambda i: float(scores[row["user"], i]))
        assert row["items"][0] == best


def test_recommend_past_the_unseen_items_lists_them_all(dhmrec_run: Path, capsys) -> None:
    # k = every item: a user's train items are never listed, "unseen_items" says how many are
    assert main(["recommend", "--run", str(dhmrec_run), "--users", "0", "--k", "40"]) == 0
    row = json.loads(capsys.readouterr().out)
    _, data, _ = load_run(dhmrec_run)
    train = data["user", "rates", "item"].edge_index
    seen = set(train[1, train[0] == 0].tolist())
    assert row["unseen_items"] == 40 - len(seen) == len(row["items"]) == len(row["scores"])
    assert set(row["items"]) == set(range(40)) - seen
    assert all(math.isfinite(s) for s in row["scores"])


def test_recommend_user_out_of_range(dhmrec_run: Path, capsys) -> None:
    assert main(["recommend", "--run", str(dhmrec_run), "--users", "0", "60"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: user id(s) [60] out of range: the run's dataset has users 0..59")


def test_export_embeddings(dhmrec_run: Path, tmp_path: Path) -> None:
    assert main(["export", "--run", str(dhmrec_run), "--out", str(tmp_path)]) == 0
    users, items = (
        np.load(tmp_path / "user_embeddings.npy"),
        np.load(tmp_path / "item_embeddings.npy"),
    )
    assert users.shape == (60, 64) and items.shape == (40, 64)
    model, _, _ = load_run(dhmrec_run)
    expected = model.full_scores(torch.tensor([3]))
    np.testing.assert_allclose(users[3] @ items.T, expected[0].numpy(), rtol=1e-5, atol=1e-5)


def test_commands_on_missing_run(tmp_path: Path, capsys) -> None:
    assert main(["export", "--run", str(tmp_path)]) == 2
    assert f"{tmp_path}: no best.pt (not a run folder of run.py)" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["export", "--run", str(tmp_path)]) == 2
    assert "no best.pt (an unfinished run folder of run.py)" in capsys.readouterr().err
    assert main(["recommend", "--run", str(tmp_path / "none"), "--users", "0"]) == 2
    assert f"{tmp_path / 'none'}: no such run folder" in capsys.readouterr().err
    for argv, message in (
        (["export", "--run", str(tmp_path), "--out", ""], "argument --out: must name a path"),
        (["plot", "tsne", str(tmp_path), "--max-items", "-5"], "--max-items must be at least 2"),
    ):
        with pytest.raises(SystemExit) as stop:  # argparse's usage error
            main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(tmp_path / "b")]) == 2
    assert "no results.json (not a finished run folder)" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(tmp_path / "x" / "..")]) == 2
    assert f"compare needs two runs, got {tmp_path} twice" in capsys.readouterr().err


@pytest.mark.parametrize("name", available("grids"))
def test_every_packaged_grid_point_builds_its_model(name: str, data) -> None:
    """Each shipped grid names a model, and every point is a valid configuration of it: known
    keys, values of the right type, accepted by the model's own checks on a toy graph."""
    axes = load_grid(CONFIG_DIR / "grids" / f"{name}.yaml")
    assert name in MODELS, f"grids/{name}.yaml names no registered model"
    config = load_config(name, "synthetic")
    if "knn_k" in config:
        config["knn_k"] = 3  # the toy graph has 30 items
    for point in expand_grid(axes):
        cfg = merge(dict(config), point, f"grids/{name}.yaml")
        model = build_model(name, data, cfg)
        for key in set(point) & set(model_settings(name, cfg)):
            assert getattr(model, key, point[key]) == point[key]


def _fake_results(valid: float) -> dict:
    metrics = {"recall@20": valid, "ndcg@20": valid / 2}
    timing = {"train_s_per_epoch": 0.1}
    return {"valid": metrics, "test": metrics, "best_epoch": 1, "epochs_run": 1, "timing": timing}


def test_grid_point_held_by_another_process_is_read_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes on one grid share its points: a point whose folder is locked is not
    trained here (the log says so); its results are read once the holder lets the folder go."""
    config = load_config("lightgcn", "synthetic", {"device": "cpu"})
    axes = {"reg_weight": [0.001, 0.0001]}
    points = expand_grid(axes)
    out = tmp_path / "grid"
    held = out / point_name(points[0])
    other = RunLock(held).__enter__()  # "another process" trains point 0
    write_json(held / "config.json", dict(merge(dict(config), points[0], "grid"), output=str(held)))
    calls = []

    def runner(cfg: dict, resume: bool) -> dict:
        calls.append((cfg["output"], resume))
        with pytest.raises(RunInUse, match="in use by another run"):
            RunLock(held).__enter__()  # still held while this process trains point 1
        write_json(held / "results.json", _fake_results(0.5))  # the other process finishes
        other.__exit__(None, None, None)
        return _fake_results(0.1)

    try:
        with caplog.at_level(logging.INFO, logger="pyg_dhmrec.experiment"):
            summary = run_grid(config, axes, out, runner)
    finally:
        other.__exit__(None, None, None)
    messages = [r.getMessage() for r in caplog.records]
    assert f"{held}: in use by another process; read when it ends" in messages
    assert f"{held}: waiting for the process that holds it" in messages
    assert calls == [(str(out / point_name(points[1])), False)]
    assert summary["selected"] == point_name(points[0])
    assert [p["valid_recall@20"] for p in summary["points"]] == [0.5, 0.1]
