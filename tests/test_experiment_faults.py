"""Faults of grids, seed studies, plots and the MRdIB plug-in's grids: a grid selects on valid
R@20 only (NaN never, ties by a stated rule), a damaged point is named, a killed grid continues
to the uninterrupted selection, plots keep every value they are given."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from kill_points import stopped_at
from toy_graphs import MODALITIES, toy_graph

from pyg_dhmrec import plots
from pyg_dhmrec.cli import main
from pyg_dhmrec.config import load_config
from pyg_dhmrec.experiment import ExperimentError, expand_grid, point_name, run_grid, run_seeds
from pyg_dhmrec.models import build_model
from pyg_dhmrec.plugins import attach_plugin

REPO = Path(__file__).resolve().parent.parent
KILL_POINTS = REPO / "tests" / "kill_points.py"
TINY = "{num_users: 60, num_items: 40, num_interactions: 600}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return [
        *("--model", "lightgcn", "--dataset", "synthetic", "--data-root", str(data_root)),
        *("--synthetic", TINY, "--device", "cpu", "--quiet", "--baseline", "null"),
        *("--epochs", "2", "--output", str(output), *extra),
    ]


def _results(valid: float, test: float = 0.3, **config) -> dict:
    return {
        "model": "lightgcn",
        "dataset": "synthetic",
        "valid": {"recall@20": valid, "ndcg@20": 0.1},
        "test": {"recall@20": test, "ndcg@20": 0.2},
        "best_epoch": 1,
        "epochs_run": 1,
        "timing": {"train_s_per_epoch": 0.1},
        "config": config,
    }


def _fake_runner(valid_of: dict[str, float]):
    """A runner that writes a finished run folder without training: valid R@20 by point."""
    calls = []

    def runner(cfg: dict, resume: bool) -> dict:
        folder = Path(cfg["output"])
        calls.append(folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        results = _results(valid_of[folder.name], test=1 - len(calls) / 10, **cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / "results.json").write_text(json.dumps(results))
        return results

    runner.calls = calls
    return runner


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- grid selection


def test_nan_valid_point_is_never_selected_and_is_listed(tmp_path: Path) -> None:
    config = load_config("lightgcn", "synthetic")
    axes = {"reg_weight": [0.1, 0.01, 0.001]}
    names = [point_name(p) for p in expand_grid(axes)]
    runner = _fake_runner({names[0]: math.nan, names[1]: 0.2, names[2]: 0.1})
    summary = run_grid(config, axes, tmp_path / "grid", runner)
    assert summary["selected"] == names[1]  # np.argmax alone would pick the NaN point
    assert summary["not_selectable"] == [names[0]]
    stored = _read(tmp_path / "grid" / "grid.json")
    assert stored["selected"] == names[1] and stored["not_selectable"] == [names[0]]
    assert f"not selectable (valid recall@20 is NaN): {names[0]}" in (
        (tmp_path / "grid" / "grid.md").read_text()
    )
    every_nan = _fake_runner(dict.fromkeys(names, math.nan))
    with pytest.raises(ExperimentError, match="every point's valid recall@20 is NaN"):
        run_grid(config, axes, tmp_path / "nan", every_nan)


def test_tie_goes_to_the_first_point_in_grid_order_and_the_summary_says_so(
    tmp_path: Path,
) -> None:
    config = load_config("lightgcn", "synthetic")
    axes = {"reg_weight": [0.1, 0.01, 0.001]}
    names = [point_name(p) for p in expand_grid(axes)]
    # the tied points' test metrics differ: the later one has the better test, never used
    runner = _fake_runner({names[0]: 0.1, names[1]: 0.3, names[2]: 0.3})
    summary = run_grid(config, axes, tmp_path / "grid", runner)
    assert summary["selected"] == names[1]
    assert summary["tied"] == [names[1], names[2]]
    stored = _read(tmp_path / "grid" / "grid.json")
    assert stored["select_split"] == "valid" and stored["select_metric"] == "valid recall@20"
    assert stored["tie_rule"] == "the first of the tied points in the grid's order"
    text = (tmp_path / "grid" / "grid.md").read_text()
    assert (
        f"selected on valid recall@20: {names[1]}\n(the selection reads valid metrics only" in text
    )
    assert f"tied on valid recall@20 ({names[1]}, {names[2]})" in text


def test_damaged_point_results_are_named_not_a_traceback(tmp_path: Path) -> None:
    config = load_config("lightgcn", "synthetic")
    axes = {"reg_weight": [0.1, 0.01]}
    names = [point_name(p) for p in expand_grid(axes)]
    out = tmp_path / "grid"
    run_grid(config, axes, out, _fake_runner(dict.fromkeys(names, 0.1)))
    damaged = out / names[1] / "results.json"
    for text, key in (("{}", "valid"), (json.dumps({**_results(0.1), "timing": {}}), "timing")):
        damaged.write_text(text)
        never = _fake_runner({})  # a finished point is read, never trained again
        with pytest.raises(ExperimentError) as error:
            run_grid(config, axes, out, never)
        assert str(error.value).startswith(f"{damaged}: key '{key}' must be")
        assert f"delete {damaged} to evaluate the run again" in str(error.value)
        assert never.calls == []


def test_grid_point_without_the_selection_metric_refused_before_any_trains(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("topk: [[10, 20], [10]]\n")  # the second point computes no R@20
    assert main([*_args(data_root, tmp_path / "out"), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {grid}, point topk=[10]: a grid selects its point on valid recall@20"
    )
    assert not (tmp_path / "out").exists()
    grid.write_text("early_stop_metric: [recall@20, ndcg@7]\n")
    assert main([*_args(data_root, tmp_path / "out"), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {grid}, point early_stop_metric=ndcg@7: early_stop_metric ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("baseline: [null, bpr]\n", "a grid cannot vary baseline: the points train without"),
        ("progress: [true, false]\n", "a grid cannot vary progress: it changes no result"),
        (
            "mrdib_kl_weight: [0.1, 0.01]\n",
            "key(s) mrdib_kl_weight set the plug-in mrdib, which this grid's runs do not attach "
            "(plugin: none); give --plugin mrdib",
        ),
    ],
    ids=["baseline", "progress", "plugin_key"],
)
def test_grid_keys_no_point_would_use_are_refused(
    data_root: Path, tmp_path: Path, capsys, text: str, message: str
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    assert main([*_args(data_root, tmp_path / "out"), "--grid", str(grid)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {grid}: {message}")
    assert not (tmp_path / "out").exists()


def test_grid_into_a_seed_study_or_a_run_folder_refused(tmp_path: Path) -> None:
    config = load_config("lightgcn", "synthetic")
    for marker in ("seeds.json", "config.json"):
        out = tmp_path / marker
        out.mkdir()
        (out / marker).write_text("{}")
        runner = _fake_runner({})
        with pytest.raises(Exception, match=rf"--output {out} holds .*\({marker}\)"):
            run_grid(config, {"reg_weight": [0.1]}, out, runner)
        assert runner.calls == []


def test_folders_of_another_grid_are_left_out_and_named(tmp_path: Path) -> None:
    config = load_config("lightgcn", "synthetic")
    out = tmp_path / "grid"
    run_grid(config, {"reg_weight": [0.5]}, out, _fake_runner({"reg_weight=0.5": 0.9}))
    summary = run_grid(config, {"reg_weight": [0.1]}, out, _fake_runner({"reg_weight=0.1": 0.2}))
    assert summary["selected"] == "reg_weight=0.1"  # not the other grid's better point
    assert summary["other_folders"] == ["reg_weight=0.5"]
    assert "folders of another grid, left out: reg_weight=0.5" in (out / "grid.md").read_text()


def test_grid_killed_inside_a_point_continues_to_the_uninterrupted_selection(
    data_root: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("reg_weight: [0.001, 0.01]\n")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*_args(data_root, whole), "--grid", str(grid)]) == 0
    # the third checkpoint: the second point's first epoch
    point, args = "pyg_dhmrec.train:Trainer.save_checkpoint@3", _args(data_root, killed)
    with stopped_at(point, tmp_path / "at_kill_point", [*args, "--grid", str(grid)]):
        pass
    first = killed / "reg_weight=0.001" / "results.json"
    assert first.is_file() and not (killed / "reg_weight=0.01" / "results.json").exists()
    mtime = first.stat().st_mtime_ns
    assert main([*_args(data_root, killed), "--grid", str(grid)]) == 0
    assert first.stat().st_mtime_ns == mtime  # the finished point was not trained again
    a, b = _read(whole / "grid.json"), _read(killed / "grid.json")
    assert a["selected"] == b["selected"] and a["tied"] == b["tied"]
    strip = ("train_s_per_epoch",)  # the one row entry that is a timing
    rows = [[{k: v for k, v in r.items() if k not in strip} for r in s["points"]] for s in (a, b)]
    assert rows[0] == rows[1]


# ---------------------------------------------------------------- seeds


def test_seeds_summary_is_numpys_mean_and_sample_std(tmp_path: Path) -> None:
    config = dict(load_config("lightgcn", "synthetic"), seed=7)
    valid = {"seed=7": 0.1, "seed=8": 0.2, "seed=9": 0.4}
    runner = _fake_runner(valid)
    summary = run_seeds(config, 3, tmp_path / "seeds", runner)
    values = [_read(tmp_path / "seeds" / s / "results.json")["test"]["recall@20"] for s in valid]
    stat = summary["test"]["recall@20"]
    assert stat["values"] == values
    assert stat["mean"] == pytest.approx(np.mean(values))
    assert stat["std"] == pytest.approx(np.std(values, ddof=1))
    assert summary["std_kind"] == "sample (ddof 1)"
    one = run_seeds(config, 1, tmp_path / "seeds", _fake_runner({}))  # seed 7 is read back
    assert one["test"]["recall@20"]["std"] == 0.0
    assert one["std_kind"] == "one seed: no spread, written 0"


def test_seed_with_other_test_metrics_is_named(tmp_path: Path) -> None:
    config = dict(load_config("lightgcn", "synthetic"), seed=1)
    run_seeds(config, 2, tmp_path / "s", _fake_runner({"seed=1": 0.1, "seed=2": 0.2}))
    path = tmp_path / "s" / "seed=2" / "results.json"
    results = _read(path)
    del results["test"]["ndcg@20"]
    path.write_text(json.dumps(results))
    with pytest.raises(ExperimentError, match=r"seed=2/results.json: test metrics recall@20 diff"):
        run_seeds(config, 2, tmp_path / "s", _fake_runner({}))


# ---------------------------------------------------------------- plots


@pytest.fixture()
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures plots would save, kept open for the test to read."""
    pytest.importorskip("matplotlib")
    kept = []

    def keep(fig, plt, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _run_folder(folder: Path, history: list, **extra) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({**_results(0.1), "history": history, **extra}))
    return folder


def test_curves_keep_zero_and_negative_loss_parts_and_a_single_epoch(
    tmp_path: Path, figures: list
) -> None:
    # a CLUB bound is negative and a reg part may be 0: a log axis would drop both
    history = [{"epoch": 1, "loss": {"bpr": 0.7, "reg": 0.0, "mrdib_redundant": -0.01}}]
    plots.plot_curves(_run_folder(tmp_path / "run", history), tmp_path)
    ax_loss = figures[0].axes[0]
    assert ax_loss.get_yscale() == "symlog"
    drawn = {line.get_label(): list(line.get_ydata()) for line in ax_loss.get_lines()}
    assert drawn == {"bpr": [0.7], "reg": [0.0], "mrdib_redundant": [-0.01]}
    assert all(line.get_marker() not in (None, "None", "") for line in ax_loss.get_lines())


def test_curves_of_a_damaged_history_are_named(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    history = [{"epoch": 1, "loss": {"bpr": 0.7}}, {"epoch": 2, "train_s": 0.1}]
    run = _run_folder(tmp_path / "run", history)
    assert main(["plot", "curves", str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'results.json'}: history entry 1 must hold 'epoch'")
    assert "Traceback" not in err


def test_curves_of_parts_that_change_between_epochs(tmp_path: Path, figures: list) -> None:
    history = [{"epoch": 1, "loss": {"elbo": 2.0}}, {"epoch": 2, "loss": {"elbo": 1.0, "bpr": 0.5}}]
    plots.plot_curves(_run_folder(tmp_path / "run", history), tmp_path)
    lines = {line.get_label(): list(line.get_ydata()) for line in figures[0].axes[0].get_lines()}
    assert lines["elbo"] == [2.0, 1.0] and np.isnan(lines["bpr"][0]) and lines["bpr"][1] == 0.5


def _point(folder: Path, valid: float, **config) -> None:
    (folder / point_name(config)).mkdir(parents=True)
    results = _results(valid, **{"epochs": 1, **config})
    (folder / point_name(config) / "results.json").write_text(json.dumps(results))


def test_sweep_of_a_three_key_one_at_a_time_grid_joins_no_two_settings(
    tmp_path: Path, figures: list
) -> None:
    axes = {"design": "one_at_a_time", "a": [1, 2, 3], "b": [1, 2], "c": [1, 2]}
    for i, point in enumerate(expand_grid(axes)):
        _point(tmp_path, 0.1 * (i + 1), **point)
    plots.plot_sweep(tmp_path, tmp_path / "png", x="a", lines="b")
    for line in figures[0].axes[0].get_lines():
        xs = list(line.get_xdata())
        assert len(xs) == len(set(xs)), f"{line.get_label()} joins points of one x: {xs}"
    labels = sorted(line.get_label() for line in figures[0].axes[0].get_lines())
    assert labels == ["b = 1, c = 1", "b = 1, c = 2", "b = 2, c = 1"]


def test_sweep_over_a_key_with_null_values(tmp_path: Path, figures: list) -> None:
    for i, value in enumerate([None, 5, 50]):
        _point(tmp_path, 0.1 * (i + 1), max_steps_per_epoch=value)
    plots.plot_sweep(tmp_path, tmp_path / "png")
    (line,) = figures[0].axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx([0.2, 0.3, 0.1])  # "5" < "50" < "null"
    ticks = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert ticks == ["5", "50", "null"]


def test_tsne_over_its_item_cap_refused_before_loading(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    argv = ["plot", "tsne", str(tmp_path), "--max-items", str(plots.MAX_TSNE_ITEMS + 1)]
    assert main(argv) == 2  # tmp_path is no run: the cap is checked first
    assert capsys.readouterr().err.startswith(
        f"error: --max-items {plots.MAX_TSNE_ITEMS + 1}: more than the {plots.MAX_TSNE_ITEMS}"
    )


# ---------------------------------------------------------------- MRdIB


@pytest.mark.parametrize(
    "modalities, options, warned",
    [
        ({"image": 6}, {}, "one modality (image): the redundant term has no pair"),
        (MODALITIES, {"synergy_weight": 0.0}, "mrdib_synergy_weight is 0: the synergy term"),
        (MODALITIES, {}, None),
    ],
    ids=["one_modality", "zero_weight", "defaults"],
)
def test_mrdib_terms_that_cannot_train_are_said(
    modalities: dict, options: dict, warned: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    data = toy_graph(modalities=modalities)
    weights = {m: 1.0 for m in modalities}
    config = {"embedding_dim": 8, "knn_k": 3, "modality_weights": weights}
    base = build_model("freedom", data, config)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.plugins.mrdib"):
        attach_plugin("mrdib", base, {f"mrdib_{k}": v for k, v in options.items()})
    messages = [r.getMessage() for r in caplog.records if r.name == "pyg_dhmrec.plugins.mrdib"]
    if warned is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warned in messages[0]
