"""The input files that benchmarks/mmrec_side_by_side.py writes for MMRec's DualGNN and DA-MRS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

side = load_benchmark("mmrec_side_by_side")

# users 0-3; user 2's item 2 is a valid interaction (x_label 1): not in the graphs
ROWS = ["0\t0\t0", "0\t1\t0", "1\t1\t0", "1\t2\t0", "2\t0\t0", "2\t1\t0", "2\t2\t1", "3\t3\t0"]
INTER = "userID\titemID\tx_label\n" + "\n".join(ROWS) + "\n"


def _dense_lists(counts: np.ndarray, most: int, min_count: int) -> dict:
    """Per row: the other rows with at least ``min_count`` shared columns, most first, ties by
    index, at most ``most`` (MMRec's preprocessing, on a dense matrix)."""
    out = {}
    for row in range(counts.shape[0]):
        pairs = [(-counts[row, o], o) for o in range(counts.shape[0]) if o != row]
        pairs = sorted(p for p in pairs if -p[0] >= min_count)[:most]
        out[row] = [[o for _, o in pairs], [float(-c) for c, _ in pairs]]
    return out


def test_user_and_item_graphs_equal_the_dense_counts(tmp_path: Path) -> None:
    inter = tmp_path / "toy.inter"
    inter.write_text(INTER)
    rated = np.zeros((4, 4))
    for user, item in [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 1), (3, 3)]:
        rated[user, item] = 1.0
    side.write_user_graph(inter, tmp_path / "users.npy", most=200)
    users = np.load(tmp_path / "users.npy", allow_pickle=True).item()
    assert users == _dense_lists(rated @ rated.T, 200, 1)
    assert users[0] == [[2, 1], [2.0, 1.0]]  # user 2 shares items 0 and 1, user 1 item 1
    side.write_item_graph(inter, tmp_path / "items.npy", most=1, min_count=1)
    items = np.load(tmp_path / "items.npy", allow_pickle=True).item()
    expected = _dense_lists(rated.T @ rated, 1, 1)
    assert items == {i: pair for i, pair in expected.items() if pair[0]}
    assert 3 not in items  # no co-interacted item: no entry, as MMRec's DA-MRS expects


def test_a_file_without_the_mmrec_columns_is_named(tmp_path: Path) -> None:
    inter = tmp_path / "bad.inter"
    inter.write_text("user\titem\n0\t0\n")
    with pytest.raises(SystemExit, match="bad.inter.*lacks userID"):
        side.write_user_graph(inter, tmp_path / "users.npy")


def _metrics(recall20: float, ndcg20: float) -> str:
    """One result dict as MMRec's ``dict2str`` writes it (four decimals, four spaces after)."""
    values = {"recall@10": recall20 / 2, "recall@20": recall20, "ndcg@10": ndcg20 / 2}
    values["ndcg@20"] = ndcg20
    return "".join(f"{k}: {v:.4f}    " for k, v in values.items())


def test_seed_results_read_mmrec_closing_summary() -> None:
    # MMRec's quick_start: one summary per point of its grid (seed first) after "All Over";
    # the "Current BEST" block before it repeats a point and must not be read
    hyper = "['seed', 'n_layers', 'reg_weight']"
    # the second point ran out of epochs: no "Finished" line, no best epoch
    output = (
        f"05 Dec 13:17 INFO =========1/3: Parameters:{hyper}=(2024, 2, 0.0001)=======\n"
        "05 Dec 13:20 INFO +++++Finished training, best eval result in epoch 41\n"
        f"05 Dec 13:20 INFO ████Current BEST████:\nParameters: {hyper}=(2024, 2, 0.0001),\n"
        f"Valid: {_metrics(0.5, 0.5)},\nTest: {_metrics(0.5, 0.5)}\n"
        f"05 Dec 13:21 INFO =========2/3: Parameters:{hyper}=(2025, 2, 0.0001)=======\n"
        f"05 Dec 13:22 INFO =========3/3: Parameters:{hyper}=(2026, 2, 0.0001)=======\n"
        "05 Dec 13:30 INFO +++++Finished training, best eval result in epoch 7\n"
        "05 Dec 13:31 INFO \n============All Over=====================\n"
        f"05 Dec 13:31 INFO Parameters: {hyper}=(2024, 2, 0.0001),\n"
        f" best valid: {_metrics(0.1, 0.04)},\n best test: {_metrics(0.09, 0.03)}\n"
        f"05 Dec 13:31 INFO Parameters: {hyper}=(2025, 2, 0.0001),\n"
        f" best valid: {_metrics(0.2, 0.05)},\n best test: {_metrics(0.07, 0.05)}\n"
        f"05 Dec 13:31 INFO Parameters: {hyper}=(2026, 2, 0.0001),\n"
        f" best valid: {_metrics(0.3, 0.05)},\n best test: {_metrics(0.08, 0.05)}\n"
    )
    rows = side.seed_results(output)
    seeds = [(r["seed"], r["best_epoch"]) for r in rows]
    assert seeds == [("2024", 41), ("2025", None), ("2026", 7)]
    assert rows[0]["valid"]["recall@20"] == 0.1 and rows[1]["test"]["ndcg@20"] == 0.05
    assert rows[1]["test"]["recall@10"] == 0.035
    table = side.accuracy_table("LightGCN", rows[:2])
    assert table[0] == "| LightGCN | 2024 | 0.1000 | 0.0450 | 0.0900 | 0.0150 | 0.0300 | 41 |"
    # mean and sample standard deviation: R@20 (0.09, 0.07) -> 0.08 ± 0.0141
    mean = "| LightGCN | mean of 2 | 0.1500 | 0.0400 ± 0.0071 | 0.0800 ± 0.0141 |"
    assert table[2].startswith(mean)


def test_seed_results_without_a_summary_fail() -> None:
    with pytest.raises(RuntimeError, match="no closing summary"):
        side.seed_results("05 Dec 13:17 INFO epoch 0 training [time: 1.20s, train loss: 0.69]\n")
