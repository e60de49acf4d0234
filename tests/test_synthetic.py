"""Tests for the per-user split and the synthetic dataset generator."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pyg_dhmrec.config import load_config
from pyg_dhmrec.data import synthetic
from pyg_dhmrec.data.split import split_per_user
from pyg_dhmrec.data.synthetic import (
    SyntheticConfig,
    _activity,
    ensure_synthetic,
    generate_synthetic,
    sample_synthetic,
)

SMALL = SyntheticConfig(
    num_users=300,
    num_items=600,
    num_interactions=4000,
    modalities={"image": 48, "text": 32},
    seed=7,
)


@pytest.fixture(scope="module")
def small_data():
    return sample_synthetic(SMALL)


def _sizes(label: np.ndarray, user: np.ndarray, u: int) -> list[int]:
    return np.bincount(label[user == u], minlength=3).tolist()


# ---------------------------------------------------------------- split_per_user


def test_split_sizes_follow_mmrec_rule() -> None:
    counts = [10, 5, 25, 2, 1, 3, 15]
    user = np.repeat(np.arange(len(counts)), counts)
    user = user[np.random.default_rng(0).permutation(user.size)]  # interleaved users
    label = split_per_user(user, num_users=len(counts) + 1, seed=3)
    assert label.shape == user.shape
    assert _sizes(label, user, 0) == [8, 1, 1]
    assert _sizes(label, user, 1) == [3, 1, 1]
    assert _sizes(label, user, 2) == [19, 3, 3]  # 2.5 rounds half up to 3
    assert _sizes(label, user, 3) == [1, 0, 1]
    assert _sizes(label, user, 4) == [1, 0, 0]
    assert _sizes(label, user, 5) == [1, 1, 1]
    assert _sizes(label, user, 6) == [11, 2, 2]


def test_split_is_seeded() -> None:
    user = np.repeat(np.arange(50), 20)
    a = split_per_user(user, 50, seed=1)
    assert np.array_equal(a, split_per_user(user, 50, seed=1))
    assert not np.array_equal(a, split_per_user(user, 50, seed=2))
    # The held-out positions are shuffled, not the first or last ones of each user.
    assert 0 < (a.reshape(50, 20)[:, -2:] == 0).mean() < 1


@pytest.mark.parametrize(
    "ratios", [(0.8, 0.2), (0.7, 0.2, 0.2), (1.0, 0.0, 0.0), (0.9, -0.1, 0.2), (0.8, 0.1, np.nan)]
)
def test_split_rejects_bad_ratios(ratios: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        split_per_user(np.zeros(10, dtype=np.int64), 1, seed=0, ratios=ratios)


def test_split_rejects_out_of_range_users() -> None:
    with pytest.raises(ValueError):
        split_per_user(np.array([0, 3]), 3, seed=0)


# ---------------------------------------------------------------- generate_synthetic


def _read_inter(path: Path) -> tuple[str, np.ndarray]:
    header = path.read_text().splitlines()[0]
    return header, np.loadtxt(path, dtype=np.int64, delimiter="\t", skiprows=1)


def test_generate_writes_valid_mmrec_folder(tmp_path: Path) -> None:
    cfg = SMALL
    generate_synthetic(tmp_path, "syn", cfg)
    header, inter = _read_inter(tmp_path / "syn.inter")
    assert header == "userID\titemID\tx_label"
    user, item, label = inter.T
    assert user.max() + 1 == cfg.num_users and item.max() + 1 == cfg.num_items
    assert np.all(np.bincount(user) > 0) and np.all(np.bincount(item) > 0)
    assert user.min() == 0 and item.min() == 0
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    # Sorted by user then item, hence no duplicate pairs iff strictly increasing keys.
    key = user * cfg.num_items + item
    assert np.all(np.diff(key) > 0)
    assert np.bincount(user).min() >= cfg.min_user_interactions
    assert np.all(np.bincount(user[label == 0], minlength=cfg.num_users) >= 1)
    assert abs(len(user) - cfg.num_interactions) < 0.05 * cfg.num_interactions

    for modality, dim in cfg.modalities.items():
        x = np.load(tmp_path / f"{modality}_feat.npy")
        assert x.shape == (cfg.num_items, dim) and x.dtype == np.float32
        assert np.isfinite(x).all()

    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["config"]["num_users"] == cfg.num_users
    assert meta["config"]["modalities"] == cfg.modalities
    assert meta["num_interactions"] == len(user)
    assert sum(meta["split"].values()) == len(user)
    assert meta["split"]["test"] == int((label == 2).sum())
    assert not list(tmp_path.glob("*.tmp"))  # no temp files left behind


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_is_deterministic(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", "syn", SMALL)
    generate_synthetic(tmp_path / "b", "syn", SMALL)
    generate_synthetic(tmp_path / "c", "syn", replace(SMALL, seed=8))
    a, b, c = (_folder_bytes(tmp_path / f) for f in "abc")
    assert a == b
    for name in ("syn.inter", "image_feat.npy", "text_feat.npy"):
        assert a[name] != c[name]


def test_every_item_occurs_when_interactions_are_sparse() -> None:
    # Fewer draws than items forces the "give unpicked items to a user" repair.
    cfg = replace(SMALL, num_users=20, num_items=400, num_interactions=100)
    data = sample_synthetic(cfg)
    assert np.all(np.bincount(data.item, minlength=cfg.num_items) > 0)
    assert np.all(np.diff(data.user * cfg.num_items + data.item) > 0)


# ---------------------------------------------------------------- planted structure


def _held_out_r2(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of least-squares regression of y on x (+ bias), fitted and scored on halves."""
    n = x.shape[0] // 2
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    coef, *_ = np.linalg.lstsq(design[:n], y[:n], rcond=None)
    resid = y[n:] - design[n:] @ coef
    total = y[n:] - y[n:].mean(axis=0)
    return float(1.0 - (resid**2).sum() / (total**2).sum())


def test_features_carry_common_and_specific_factors(small_data) -> None:
    x_img, x_txt = small_data.features["image"], small_data.features["text"]
    assert _held_out_r2(x_img, small_data.common) > 0.8
    assert _held_out_r2(x_txt, small_data.common) > 0.8
    assert _held_out_r2(x_img, small_data.specific("image")) > 0.8
    assert _held_out_r2(x_txt, small_data.specific("image")) < 0.2
    assert _held_out_r2(x_img, small_data.specific("text")) < 0.2
    # Collaborative factors are invisible to every modality.
    both = np.hstack([x_img, x_txt])
    assert _held_out_r2(both, small_data.collaborative) < 0.2


def test_interactions_follow_preferences(small_data) -> None:
    rng = np.random.default_rng(0)
    rand_user = rng.integers(0, small_data.num_users, small_data.user.size)
    rand_item = rng.integers(0, small_data.num_items, small_data.user.size)
    for with_pop in (True, False):
        observed = small_data.logits(small_data.user, small_data.item, with_pop).mean()
        random = small_data.logits(rand_user, rand_item, with_pop).mean()
        assert observed > random + 0.5


# ---------------------------------------------------------------- ensure_synthetic


def test_ensure_regenerates_only_on_change(tmp_path: Path) -> None:
    logs: list[str] = []
    cfg = replace(SMALL, num_users=80, num_items=150, num_interactions=900)
    assert ensure_synthetic(tmp_path, "syn", cfg, log=logs.append)
    first = _folder_bytes(tmp_path)
    assert not ensure_synthetic(tmp_path, "syn", cfg, log=logs.append)
    assert len(logs) == 1

    changed = replace(cfg, seed=cfg.seed + 1)
    assert ensure_synthetic(tmp_path, "syn", changed, log=logs.append)
    assert "config" in logs[-1]
    assert _folder_bytes(tmp_path)["syn.inter"] != first["syn.inter"]
    assert not ensure_synthetic(tmp_path, "syn", changed, log=logs.append)

    (tmp_path / "text_feat.npy").unlink()  # an incomplete folder is regenerated too
    assert ensure_synthetic(tmp_path, "syn", changed, log=logs.append)
    assert "text_feat.npy" in logs[-1]
    assert len(logs) == 3


def test_ensure_never_overwrites_files_the_generator_did_not_write(tmp_path: Path) -> None:
    cfg = replace(SMALL, num_users=80, num_items=150, num_interactions=900)
    (tmp_path / "syn.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    np.save(tmp_path / "image_feat.npy", np.ones((1, 3), dtype=np.float32))
    before = _folder_bytes(tmp_path)
    with pytest.raises(FileExistsError, match=r"syn\.inter, image_feat\.npy.*did not write"):
        ensure_synthetic(tmp_path, "syn", cfg, log=lambda _: None)
    assert _folder_bytes(tmp_path) == before
    # A meta.json of another writer does not make the files the generator's either.
    (tmp_path / "meta.json").write_text('{"generator": "someone else"}')
    with pytest.raises(FileExistsError):
        ensure_synthetic(tmp_path, "syn", cfg, log=lambda _: None)


def test_ensure_finishes_an_interrupted_generation(tmp_path: Path) -> None:
    cfg = replace(SMALL, num_users=80, num_items=150, num_interactions=900)
    assert ensure_synthetic(tmp_path, "syn", cfg, log=lambda _: None)
    assert not (tmp_path / ".synthetic-generation").exists()
    complete = _folder_bytes(tmp_path)
    # Killed after its first files: the marker is there, meta.json is not.
    (tmp_path / ".synthetic-generation").write_text("syn\n")
    (tmp_path / "meta.json").unlink()
    (tmp_path / "syn.inter").write_text("userID\titemID\tx_label\n")
    assert ensure_synthetic(tmp_path, "syn", cfg, log=lambda _: None)
    assert _folder_bytes(tmp_path) == complete


# ---------------------------------------------------------------- large graphs (step 4')

POOLED = SyntheticConfig(
    num_users=1500,
    num_items=1000,
    num_interactions=15000,
    modalities={"image": 8, "text": 4},
    seed=3,
    candidate_pool=16,
)


def _check_graph(data, config: SyntheticConfig) -> None:
    """Every user keeps its drawn activity, pairs are distinct, every item occurs."""
    assert np.all(np.diff(data.user * config.num_items + data.item) > 0)
    assert np.all(np.bincount(data.item, minlength=config.num_items) > 0)
    extra = np.bincount(data.user, minlength=config.num_users) - _activity(config)
    # Users have exactly their n_u items, plus one per unpicked item given to them (step 5).
    assert extra.min() == 0 and extra.sum() == data.user.size - _activity(config).sum()


def _preference_gap(data) -> float:
    """Mean preference logit (no popularity) of drawn pairs minus that of random pairs."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, data.num_users, data.user.size)
    items = rng.integers(0, data.num_items, data.user.size)
    drawn = data.logits(data.user, data.item, with_popularity=False).mean()
    return float(drawn - data.logits(users, items, with_popularity=False).mean())


def test_candidate_pool_draws_a_valid_graph_that_follows_preferences_and_popularity() -> None:
    data = sample_synthetic(POOLED)
    _check_graph(data, POOLED)
    degree = np.bincount(data.item, minlength=POOLED.num_items)
    assert np.corrcoef(np.log1p(degree), data.log_popularity)[0, 1] > 0.5
    # A larger pool moves the draws towards the exact softmax (step 4) and its stronger signal.
    gaps = [_preference_gap(sample_synthetic(replace(POOLED, candidate_pool=c))) for c in (16, 256)]
    exact = _preference_gap(sample_synthetic(replace(POOLED, candidate_pool=None)))
    assert 1.0 < gaps[0] < gaps[1] < exact + 0.1
    assert sample_synthetic(POOLED).item.tobytes() == data.item.tobytes()  # deterministic


def test_heavy_users_and_users_short_of_candidates_take_the_exact_draw(monkeypatch) -> None:
    # Steep popularity: 16-64 candidates of 200 items repeat, so some users lack n_u distinct
    # ones; users with 4 n_u >= 100 (half the items) score all items from the start.
    config = replace(
        POOLED, num_users=100, num_items=200, num_interactions=2000, popularity_sigma=3.0
    )
    exact_rows = []
    original = synthetic._exact_rows

    def counting(idx, *args):
        exact_rows.append(idx.size)
        return original(idx, *args)

    monkeypatch.setattr(synthetic, "_exact_rows", counting)
    data = sample_synthetic(config)
    heavy = int((4 * _activity(config) * 2 >= config.num_items).sum())
    assert 0 < heavy < sum(exact_rows) < config.num_users
    _check_graph(data, config)


def test_features_in_row_blocks_equal_the_one_shot_formula(monkeypatch) -> None:
    # The noise is added in row blocks of _CHUNK_ELEMENTS; its stream is consumed in row
    # order, so the blocks change no number.
    config = SMALL
    whole = sample_synthetic(config)
    monkeypatch.setattr(synthetic, "_CHUNK_ELEMENTS", 7 * 48)  # 7-row image blocks
    blocked = sample_synthetic(config)
    for m in config.modalities:
        assert np.array_equal(whole.features[m], blocked.features[m])
    # And the features are the one-shot formula x = latent @ maps + noise_std * eps.
    rng = np.random.default_rng([config.seed, 3, zlib.crc32(b"text")])
    noise = rng.standard_normal((config.num_items, config.noise_dim))
    latent = np.concatenate([whole.common, whole.specific("text"), noise], 1).astype(np.float32)
    maps = rng.standard_normal((latent.shape[1], 32), dtype=np.float32) / np.float32(
        np.sqrt(latent.shape[1])
    )
    expected = latent @ maps
    expected += np.float32(config.noise_std) * rng.standard_normal(expected.shape, np.float32)
    np.testing.assert_array_equal(blocked.features["text"], expected)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_sports_shaped_datasets_are_the_preset(scale: int) -> None:
    config = SyntheticConfig.sports_shape(scale)
    assert (config.num_users, config.num_items, config.num_interactions) == (
        35598 * scale,
        18357 * scale,
        296337 * scale,
    )
    assert config.modalities == {"image": 4096, "text": 384}
    settings = load_config("lightgcn", f"synthetic_sports_{scale}x")
    assert SyntheticConfig(**settings["synthetic"]) == config
    assert settings["modalities"] == {}  # the generated files, image_feat.npy and text_feat.npy


def test_bad_scale_and_candidate_pool_are_refused() -> None:
    for scale in (0, 1.5, True):
        with pytest.raises(ValueError, match="scale must be an int >= 1"):
            SyntheticConfig.sports_shape(scale)
    for pool in (0, 2.0, True):
        with pytest.raises(ValueError, match="candidate_pool must be null or an int >= 1"):
            replace(SMALL, candidate_pool=pool)


def test_meta_records_the_candidate_pool_only_when_set(tmp_path: Path) -> None:
    # Folders generated before the key existed stay valid: an unset pool is not recorded.
    small = replace(SMALL, num_users=50, num_items=80, num_interactions=500)
    generate_synthetic(tmp_path / "a", "syn", small)
    assert "candidate_pool" not in json.loads((tmp_path / "a" / "meta.json").read_text())["config"]
    generate_synthetic(tmp_path / "b", "syn", replace(small, candidate_pool=8))
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["config"]["candidate_pool"] == 8
    assert not ensure_synthetic(tmp_path / "b", "syn", replace(small, candidate_pool=8))
