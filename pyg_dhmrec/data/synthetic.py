"""Deterministic synthetic multimodal recommendation data with planted structure.

This is the library's built-in default dataset: it needs no download and is written in
MMRec format (``<name>.inter`` plus ``<modality>_feat.npy``).

Generative story (all latents standard normal, ``D = common_dim + M * specific_dim + id_dim``
for ``M`` modalities, modalities processed in sorted name order):

1. Item ``i`` has latent ``z_i = [c_i, s_i^{m_1}, ..., s_i^{m_M}, b_i]``: ``c_i`` (``common_dim``)
   is visible in every modality, ``s_i^m`` (``specific_dim``) only in modality ``m`` and
   ``b_i`` (``id_dim``) in none (purely collaborative). Its popularity is lognormal,
   ``log pop_i ~ N(0, popularity_sigma^2)``. User ``u`` has a latent ``p_u`` of dimension ``D``.
2. Preference logit: ``l_ui = <p_u, z_i> / sqrt(D) / temperature + log pop_i``.
3. Activity: ``n_u = min_user_interactions + extra_u`` where the extras are a multinomial
   draw of ``num_interactions - num_users * min_user_interactions`` over lognormal
   (``activity_sigma``) user weights (heavy tailed, total about ``num_interactions``), capped at
   ``max(min_user_interactions, num_items // 2)``; ``num_interactions`` must lie between
   ``num_users`` times the least and times the cap.
4. User ``u`` picks ``n_u`` distinct items from ``softmax(l_u)`` without replacement via the
   Gumbel top-k trick (users processed in memory-bounded chunks). This scores every
   (user, item) pair, ``O(U I D)`` time, which is minutes at Sports' shape and hours at 8x;
   ``candidate_pool`` replaces it by a sampled approximation (step 4').
5. An item nobody picked is given to one user sampled from the softmax over users of that
   item's preference logits, so every item id occurs and ``num_items`` is exact.
6. Modality ``m`` features: ``x_i^m = A_m c_i + B_m s_i^m + C_m n_i^m + noise_std * eps`` with
   Gaussian maps and ``n_i^m`` (``noise_dim``) a preference-irrelevant latent of that modality
   only, stored as float32 ``[num_items, dim_m]`` (the noise is added in row blocks: the only
   full-size array is the output).
7. ``x_label`` comes from :func:`~pyg_dhmrec.data.split.split_per_user` with the same seed.

4'. With ``candidate_pool = C`` (for large graphs: time and memory linear in the number of
   users), user ``u`` scores only ``W_u = max(C, 4 n_u)`` candidates drawn i.i.d. from the
   popularity distribution ``q_i = pop_i / sum_j pop_j``; among the distinct candidates it keeps
   the ``n_u`` largest Gumbel keys of ``l_ui - log pi_i``, where ``pi_i = 1 - (1 - q_i)^W_u``
   is the chance that item ``i`` is a candidate (the sampled-softmax correction: as ``W_u``
   grows, ``pi_i -> 1`` and this is step 4). A user whose ``W_u`` reaches half the items, or
   whose candidates hold fewer than ``n_u`` distinct items, takes step 4. In step 5, an unpicked
   item goes to the best (by Gumbel key of the preference logit) of ``C`` users drawn uniformly.
   Not step 4's exact distribution: the drawn pairs' preference signal is weaker at small
   ``C``. Measured at 1x Sports' shape, the mean preference logit of drawn pairs minus that of
   random pairs is 2.5 (``C = 64``, 2.3 s), 3.2 (256, 9 s), 3.6 (1024, 42 s) and 3.9 (exact,
   44 s). For speed and memory benchmarks at scale (:meth:`SyntheticConfig.sports_shape`).

Separate random streams are derived from ``seed`` for latents, activity, item draws and each
modality (keyed by the modality name), so e.g. changing a feature dimension leaves the
interactions unchanged.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pyg_dhmrec.atomic_files import write_json, write_npy, write_text
from pyg_dhmrec.data.mmrec_format import MODALITY_NAME_RE, MODALITY_NAME_RULE

from .split import split_per_user

__all__ = [
    "GENERATOR_VERSION",
    "SyntheticConfig",
    "SyntheticData",
    "ensure_synthetic",
    "generate_synthetic",
    "sample_synthetic",
]

# Bump whenever the generative process changes so cached folders get regenerated.
GENERATOR_VERSION = 1
# Max float32 elements of one [users, items] score block (16 MiB) during item draws, of one
# [users, candidates, D] block of gathered latents (step 4') and of one feature row block.
_CHUNK_ELEMENTS = 1 << 22
# Step 4': candidates per user at least this many times the user's number of items.
_POOL_OVERSAMPLE = 4
_META_FILE = "meta.json"
#: Written before a (re)generation's first file and removed after ``meta.json``: an interrupted
#: generation leaves it, so the next one knows that the files it finds are its own.
_BUILD_MARKER = ".synthetic-generation"
_GENERATOR = "pyg_dhmrec.data.synthetic"

# Stream ids for np.random.default_rng([seed, stream, ...]).
_STREAM_LATENT, _STREAM_ACTIVITY, _STREAM_DRAW, _STREAM_FEATURE = 0, 1, 2, 3


@dataclass
class SyntheticConfig:
    """Size and structure of the synthetic dataset (see the module docstring)."""

    num_users: int = 3000
    num_items: int = 2000
    num_interactions: int = 25000
    modalities: dict[str, int] = field(default_factory=lambda: {"image": 128, "text": 64})
    common_dim: int = 8
    specific_dim: int = 4
    id_dim: int = 8
    noise_dim: int = 8
    noise_std: float = 0.1
    min_user_interactions: int = 5
    popularity_sigma: float = 0.5
    activity_sigma: float = 1.0
    # Preference logits have std 1/temperature: 0.5 makes them dominate the popularity term
    # (std 1) without making the top items near-deterministic.
    temperature: float = 0.5
    seed: int = 2024
    # None: exact item draws (step 4); an int C: sampled candidates (step 4', large graphs).
    candidate_pool: int | None = None

    def __post_init__(self) -> None:
        # Types first: a YAML 2.5 or true would otherwise fail deep inside numpy's samplers.
        for name in (
            "num_users",
            "num_items",
            "num_interactions",
            "common_dim",
            "specific_dim",
            "id_dim",
            "noise_dim",
            "min_user_interactions",
            "seed",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("noise_std", "popularity_sigma", "activity_sigma", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not isinstance(self.modalities, dict):
            raise ValueError(f"modalities must be a mapping name -> dim, got {self.modalities!r}")
        if self.num_users < 1 or self.num_items < 2:
            raise ValueError("need num_users >= 1 and num_items >= 2")
        if not 1 <= self.min_user_interactions < self.num_items:
            raise ValueError("min_user_interactions must lie in [1, num_items)")
        # Step 3 gives each user min_user_interactions, at most the cap: outside these bounds
        # the total would silently differ from num_interactions.
        least = self.num_users * self.min_user_interactions
        cap = max(self.min_user_interactions, self.num_items // 2)
        if self.num_interactions < least:
            raise ValueError(
                f"num_interactions must be at least num_users * min_user_interactions = "
                f"{self.num_users} * {self.min_user_interactions} = {least} (every user gets "
                f"min_user_interactions), got {self.num_interactions}"
            )
        if self.num_interactions > self.num_users * cap:
            raise ValueError(
                f"num_interactions must be at most num_users * max(min_user_interactions, "
                f"num_items // 2) = {self.num_users} * {cap} = {self.num_users * cap} (each user "
                f"picks at most {cap} items), got {self.num_interactions}"
            )
        if not self.modalities:
            raise ValueError("at least one modality is required")
        for name, dim in self.modalities.items():
            # The name becomes a file name (<name>_feat.npy) and an attribute name.
            if not isinstance(name, str) or not MODALITY_NAME_RE.fullmatch(name):
                raise ValueError(
                    f"modality name {name!r}: a modality name must be {MODALITY_NAME_RULE}"
                )
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"modality {name!r} needs a dim >= 1 (an integer), got {dim!r}")
        dims = (self.common_dim, self.specific_dim, self.id_dim, self.noise_dim)
        if min(dims) < 0 or self.latent_dim < 1:
            raise ValueError("latent dims must be >= 0 with a positive total")
        if self.noise_std < 0 or self.popularity_sigma < 0 or self.activity_sigma < 0:
            raise ValueError("noise_std, popularity_sigma and activity_sigma must be >= 0")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        pool = self.candidate_pool
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
            raise ValueError(f"candidate_pool must be null or an int >= 1, got {pool!r}")

    @property
    def latent_dim(self) -> int:
        """Total preference latent dimension ``D``."""
        return self.common_dim + len(self.modalities) * self.specific_dim + self.id_dim

    @classmethod
    def baby_shape(cls, **overrides: Any) -> SyntheticConfig:
        """Preset with the shape of Amazon Baby (19445 users, 7050 items, 160792 edges)."""
        base = cls(
            num_users=19445,
            num_items=7050,
            num_interactions=160792,
            modalities={"image": 4096, "text": 384},
        )
        return replace(base, **overrides)

    #: Amazon Sports' published shape (users, items, interactions) and feature widths.
    SPORTS_SHAPE = (35598, 18357, 296337)
    SPORTS_MODALITIES = {"image": 4096, "text": 384}

    @classmethod
    def sports_shape(cls, scale: int = 1, **overrides: Any) -> SyntheticConfig:
        """Preset with ``scale`` times Amazon Sports' users, items and interactions (35598,
        18357, 296337 at 1x; the interactions per user and per item stay Sports'), Sports'
        4096-d image and 384-d text widths, and ``candidate_pool=64`` (step 4'), so 8x (2.37M
        interactions) is generated in about a minute."""
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be an int >= 1, got {scale!r}")
        users, items, interactions = cls.SPORTS_SHAPE
        base = cls(
            num_users=users * scale,
            num_items=items * scale,
            num_interactions=interactions * scale,
            modalities=dict(cls.SPORTS_MODALITIES),
            candidate_pool=64,
        )
        return replace(base, **overrides)


@dataclass
class SyntheticData:
    """Sampled interactions (sorted by user, then item), features and the true latents."""

    config: SyntheticConfig
    user: np.ndarray  # [E] int64
    item: np.ndarray  # [E] int64
    label: np.ndarray  # [E] int64 x_label: 0 train, 1 valid, 2 test
    features: dict[str, np.ndarray]  # modality -> [num_items, dim] float32
    user_latent: np.ndarray  # [num_users, D]
    item_latent: np.ndarray  # [num_items, D] = [common | specific per sorted modality | id]
    log_popularity: np.ndarray  # [num_items]
    noise_latent: dict[str, np.ndarray]  # modality -> [num_items, noise_dim]

    @property
    def num_users(self) -> int:
        return self.config.num_users

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def common(self) -> np.ndarray:
        """Item latent factors visible in every modality, ``[num_items, common_dim]``."""
        return self.item_latent[:, : self.config.common_dim]

    def specific(self, modality: str) -> np.ndarray:
        """Item latent factors visible only in ``modality``, ``[num_items, specific_dim]``."""
        start = self.config.common_dim + _modality_order(self.config).index(modality) * (
            self.config.specific_dim
        )
        return self.item_latent[:, start : start + self.config.specific_dim]

    @property
    def collaborative(self) -> np.ndarray:
        """Item latent factors visible in no modality, ``[num_items, id_dim]``."""
        return self.item_latent[:, self.item_latent.shape[1] - self.config.id_dim :]

    def logits(
        self, user: np.ndarray, item: np.ndarray, with_popularity: bool = True
    ) -> np.ndarray:
        """True preference logits ``l_ui`` of aligned ``user`` / ``item`` id arrays."""
        scale = 1.0 / (math.sqrt(self.config.latent_dim) * self.config.temperature)
        dot = np.einsum("ed,ed->e", self.user_latent[user], self.item_latent[item]) * scale
        return dot + self.log_popularity[item] if with_popularity else dot

    def split_counts(self) -> dict[str, int]:
        """Number of train / valid / test interactions."""
        counts = np.bincount(self.label, minlength=3)
        return {"train": int(counts[0]), "valid": int(counts[1]), "test": int(counts[2])}


def _modality_order(config: SyntheticConfig) -> list[str]:
    return sorted(config.modalities)


def _activity(config: SyntheticConfig) -> np.ndarray:
    """Heavy-tailed per-user interaction counts with total about ``num_interactions``."""
    rng = np.random.default_rng([config.seed, _STREAM_ACTIVITY])
    weights = rng.lognormal(0.0, config.activity_sigma, config.num_users)
    extra_total = max(0, config.num_interactions - config.num_users * config.min_user_interactions)
    extra = rng.multinomial(extra_total, weights / weights.sum())
    cap = max(config.min_user_interactions, config.num_items // 2)
    return np.minimum(config.min_user_interactions + extra, cap).astype(np.int64)


def _top_k(keys: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the ``k[r]`` largest ``keys[r]`` per row, in decreasing key order:
    ``(top [R, max k], mask [R, max k])``, ``mask`` marking each row's first ``k[r]``."""
    width, k_max = keys.shape[1], int(k.max())
    top = np.argpartition(keys, width - k_max, axis=1)[:, width - k_max :]
    top_keys = np.take_along_axis(keys, top, axis=1)
    top = np.take_along_axis(top, np.argsort(-top_keys, axis=1, kind="stable"), axis=1)
    return top, np.arange(k_max) < k[:, None]


def _add_gumbel(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``keys`` plus Gumbel(0, 1) noise, in place (logit - log(Exp(1)))."""
    with np.errstate(divide="ignore"):
        keys -= np.log(rng.standard_exponential(keys.shape, dtype=np.float32))
    return keys


def _exact_rows(
    idx: np.ndarray,
    k: np.ndarray,
    p: np.ndarray,
    z_t: np.ndarray,
    log_pop: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Step 4 for users ``idx``: ``k[r]`` distinct items from ``softmax(l_u)`` each, flat."""
    keys = p[idx] @ z_t
    keys += log_pop
    top, mask = _top_k(_add_gumbel(keys, rng), k)
    return top[mask]


def _row_blocks(width: np.ndarray, per_row: int) -> list[tuple[int, int]]:
    """``[start, end)`` blocks of consecutive rows whose ``rows * max width * per_row`` stays
    within :data:`_CHUNK_ELEMENTS` (``width`` non-decreasing)."""
    blocks, start = [], 0
    while start < width.size:
        end = start + max(1, _CHUNK_ELEMENTS // (int(width[start]) * per_row))
        end = min(end, width.size)
        # The widest row of the block sets its size: shrink once to fit it.
        end = start + max(1, min(end - start, _CHUNK_ELEMENTS // (int(width[end - 1]) * per_row)))
        blocks.append((start, end))
        start = end
    return blocks


def _draw_items(
    config: SyntheticConfig,
    user_latent: np.ndarray,
    item_latent: np.ndarray,
    log_popularity: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``counts[u]`` distinct items per user from ``softmax(l_u)`` (Gumbel top-k; step 4'
    with ``candidate_pool``), then give every unpicked item to one user (step 5)."""
    rng = np.random.default_rng([config.seed, _STREAM_DRAW])
    num_items = config.num_items
    scale = 1.0 / (math.sqrt(config.latent_dim) * config.temperature)
    p = (user_latent * scale).astype(np.float32)
    z_t = np.ascontiguousarray(item_latent.T, dtype=np.float32)
    log_pop = log_popularity.astype(np.float32)

    # Users of similar activity share a chunk so each chunk's top-k width stays tight.
    order = np.argsort(counts, kind="stable")
    users, items = [], []
    if config.candidate_pool is None:
        rows = max(1, _CHUNK_ELEMENTS // num_items)
        for start in range(0, order.size, rows):
            idx = order[start : start + rows]
            users.append(np.repeat(idx, counts[idx]))
            items.append(_exact_rows(idx, counts[idx], p, z_t, log_pop, rng))
    else:
        _pooled_draws(config, order, counts, p, z_t, log_popularity, rng, users, items)
    user = np.concatenate(users)
    item = np.concatenate(items).astype(np.int64)

    missing = np.flatnonzero(np.bincount(item, minlength=num_items) == 0)
    if missing.size and config.candidate_pool is None:
        # Popularity is constant per item, so only the preference term matters here.
        cols = max(1, _CHUNK_ELEMENTS // config.num_users)
        owners = []
        for start in range(0, missing.size, cols):
            block = _add_gumbel(p @ z_t[:, missing[start : start + cols]], rng)
            owners.append(np.argmax(block, axis=0))
        user = np.concatenate([user, np.concatenate(owners)])
        item = np.concatenate([item, missing])
    elif missing.size:
        pool = config.candidate_pool
        rows = max(1, _CHUNK_ELEMENTS // (pool * config.latent_dim))
        owners = []
        for start in range(0, missing.size, rows):
            block = missing[start : start + rows]
            cand = rng.integers(0, config.num_users, (block.size, pool))
            keys = _add_gumbel(np.einsum("rcd,dr->rc", p[cand], z_t[:, block]), rng)
            owners.append(np.take_along_axis(cand, keys.argmax(1)[:, None], 1)[:, 0])
        user = np.concatenate([user, np.concatenate(owners)])
        item = np.concatenate([item, missing])

    order = np.lexsort((item, user))
    return user[order].astype(np.int64), item[order]


def _pooled_draws(
    config: SyntheticConfig,
    order: np.ndarray,
    counts: np.ndarray,
    p: np.ndarray,
    z_t: np.ndarray,
    log_popularity: np.ndarray,
    rng: np.random.Generator,
    users: list[np.ndarray],
    items: list[np.ndarray],
) -> None:
    """Step 4' for the users in ``order`` (by increasing activity), appended to
    ``users`` / ``items``."""
    num_items = config.num_items
    z = np.ascontiguousarray(z_t.T)
    log_pop = log_popularity.astype(np.float32)
    q = np.exp(log_popularity - log_popularity.max())
    q /= q.sum()
    cdf = np.cumsum(q)
    log1m_q = np.log1p(-np.minimum(q, 1.0 - 1e-12))  # log(1 - q_i)
    offset: dict[int, np.ndarray] = {}  # per candidate count W
    width = np.minimum(
        num_items, np.maximum(config.candidate_pool, _POOL_OVERSAMPLE * counts[order])
    )
    # Users whose W reaches half the items score all items (step 4): the last ones in
    # ``order``, since W grows with n_u.
    pooled = int(np.searchsorted(width * 2 >= num_items, True))
    for start, end in _row_blocks(width[:pooled], config.latent_dim):
        idx, k = order[start:end], counts[order[start:end]]
        pool = int(width[end - 1])
        if pool not in offset:
            # log pop_i - log pi_i, pi_i = 1 - (1 - q_i)^W: the chance that i is a candidate.
            offset[pool] = (log_pop - np.log(-np.expm1(pool * log1m_q))).astype(np.float32)
        draws = rng.random((idx.size, pool))
        draws.sort(axis=1)  # sorted draws give sorted candidates: duplicates are neighbours
        cand = np.minimum(np.searchsorted(cdf, draws, side="right"), num_items - 1)
        duplicate = np.zeros(cand.shape, dtype=bool)
        duplicate[:, 1:] = cand[:, 1:] == cand[:, :-1]
        keys = np.einsum("rcd,rd->rc", z[cand], p[idx])
        keys += offset[pool][cand]
        keys = _add_gumbel(keys, rng)
        keys[duplicate] = -np.inf
        short = (~duplicate).sum(axis=1) < k
        if short.any():  # too few distinct candidates: these users take step 4
            users.append(np.repeat(idx[short], k[short]))
            items.append(_exact_rows(idx[short], k[short], p, z_t, log_pop, rng))
            idx, k, cand, keys = idx[~short], k[~short], cand[~short], keys[~short]
        if idx.size:
            top, mask = _top_k(keys, k)
            users.append(np.repeat(idx, k))
            items.append(np.take_along_axis(cand, top, axis=1)[mask])
    for start, end in _row_blocks(np.full(order.size - pooled, num_items), 1):
        idx = order[pooled + start : pooled + end]
        users.append(np.repeat(idx, counts[idx]))
        items.append(_exact_rows(idx, counts[idx], p, z_t, log_pop, rng))


def _features(
    config: SyntheticConfig, modality: str, common: np.ndarray, specific: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(features, noise_latent)`` of one modality."""
    dim = config.modalities[modality]
    # Keyed by name, so adding a modality does not change the others' features.
    rng = np.random.default_rng(
        [config.seed, _STREAM_FEATURE, zlib.crc32(modality.encode("utf-8"))]
    )
    noise_latent = rng.standard_normal((config.num_items, config.noise_dim))
    latent = np.concatenate([common, specific, noise_latent], axis=1).astype(np.float32)
    width = latent.shape[1]
    # Unit-variance features from the latents (before the iid noise).
    maps = rng.standard_normal((width, dim), dtype=np.float32) / np.float32(math.sqrt(width))
    x = latent @ maps if width else np.zeros((config.num_items, dim), dtype=np.float32)
    # The noise is added in row blocks, so no temporary is as large as the output; its stream
    # is drawn in row order, which gives the numbers of one draw of the whole matrix.
    rows = max(1, _CHUNK_ELEMENTS // dim)
    for start in range(0, config.num_items, rows):
        block = x[start : start + rows]
        block += np.float32(config.noise_std) * rng.standard_normal(block.shape, dtype=np.float32)
    return x, noise_latent


def sample_synthetic(config: SyntheticConfig) -> SyntheticData:
    """Sample a dataset (interactions, features, latents) from ``config`` deterministically."""
    rng = np.random.default_rng([config.seed, _STREAM_LATENT])
    user_latent = rng.standard_normal((config.num_users, config.latent_dim))
    item_latent = rng.standard_normal((config.num_items, config.latent_dim))
    log_popularity = config.popularity_sigma * rng.standard_normal(config.num_items)

    counts = _activity(config)
    user, item = _draw_items(config, user_latent, item_latent, log_popularity, counts)
    label = split_per_user(user, config.num_users, config.seed)

    data = SyntheticData(
        config=config,
        user=user,
        item=item,
        label=label,
        features={},
        user_latent=user_latent,
        item_latent=item_latent,
        log_popularity=log_popularity,
        noise_latent={},
    )
    for modality in _modality_order(config):
        x, noise = _features(config, modality, data.common, data.specific(modality))
        data.features[modality] = x
        data.noise_latent[modality] = noise
    return data


def _config_json(config: SyntheticConfig) -> dict[str, Any]:
    # JSON round trip so the comparison with a loaded meta.json is like for like.
    fields = asdict(config)
    if fields["candidate_pool"] is None:  # folders generated before the key keep their meta
        del fields["candidate_pool"]
    return json.loads(json.dumps(fields))


def _expected_files(folder: Path, name: str, config: SyntheticConfig) -> list[Path]:
    files = [folder / f"{name}.inter", folder / _META_FILE]
    return files + [folder / f"{m}_feat.npy" for m in _modality_order(config)]


def generate_synthetic(folder: Path, name: str, config: SyntheticConfig) -> None:
    """Sample from ``config`` and write ``<name>.inter``, features and ``meta.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # meta.json marks a finished folder: drop it first, write it last.
    write_text(folder / _BUILD_MARKER, f"{name}\n")
    (folder / _META_FILE).unlink(missing_ok=True)
    data = sample_synthetic(config)

    rows = zip(data.user.tolist(), data.item.tolist(), data.label.tolist())
    text = "userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows)
    write_text(folder / f"{name}.inter", text)
    for modality, x in data.features.items():
        write_npy(folder / f"{modality}_feat.npy", x)

    meta = {
        "generator": _GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "name": name,
        "config": _config_json(config),
        "num_users": data.num_users,
        "num_items": data.num_items,
        "num_interactions": int(data.user.size),
        "split": data.split_counts(),
    }
    write_json(folder / _META_FILE, meta)
    (folder / _BUILD_MARKER).unlink(missing_ok=True)


def _generated_here(folder: Path) -> bool:
    """Whether the generator wrote this folder's files: its ``meta.json`` or the marker of an
    interrupted generation is there."""
    if (folder / _BUILD_MARKER).is_file():
        return True
    try:
        meta = json.loads((folder / _META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == _GENERATOR


def _generated_feature_file(folder: Path, file: str) -> bool:
    """Whether ``meta.json`` records ``file`` as a feature file of the generation it describes."""
    try:
        meta = json.loads((folder / _META_FILE).read_text())
        return file in {f"{m}_feat.npy" for m in meta["config"]["modalities"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_synthetic(
    folder: Path,
    name: str,
    config: SyntheticConfig,
    log: Callable[[str], Any] = print,
) -> bool:
    """Generate ``folder`` unless it already holds this exact config; True if (re)generated.

    Files of the folder are only replaced when the generator wrote them: a folder that holds
    ``<name>.inter`` or a feature file of its own (real data under a name whose configuration
    sets ``synthetic``) raises :class:`FileExistsError` and is left as it is."""
    folder = Path(folder)
    reason = None
    missing = [p.name for p in _expected_files(folder, name, config) if not p.is_file()]
    if missing:
        reason = f"missing {', '.join(missing)}"
    else:
        try:
            meta = json.loads((folder / _META_FILE).read_text())
        except (OSError, ValueError) as err:
            meta, reason = None, f"unreadable {_META_FILE} ({err})"
        if meta is not None and not isinstance(meta, dict):
            meta, reason = None, f"malformed {_META_FILE}"
        if meta is not None:
            if meta.get("generator_version") != GENERATOR_VERSION:
                reason = f"generator version {meta.get('generator_version')} is outdated"
            elif meta.get("config") != _config_json(config):
                reason = "config differs from the one in meta.json"
    if reason is None:
        return False
    foreign = [
        p.name for p in _expected_files(folder, name, config) if p.name != _META_FILE and p.exists()
    ]
    if foreign and not _generated_here(folder):
        raise FileExistsError(
            f"{folder} holds {', '.join(foreign)}, which the synthetic generator did not write "
            f"(no {_META_FILE} of its own there); the 'synthetic' setting would overwrite them. "
            f"Drop 'synthetic' to read these files, or choose another dataset name or data_root "
            f"for the generated dataset"
        )
    log(f"generating synthetic dataset {name!r} in {folder}: {reason}")
    if _generated_here(folder):  # an earlier generation's other modalities would linger
        keep = {p.name for p in _expected_files(folder, name, config)}
        for stale in folder.glob("*_feat.npy"):
            if stale.name not in keep and _generated_feature_file(folder, stale.name):
                stale.unlink()
    generate_synthetic(folder, name, config)
    return True
