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
   ``max(min_user_interactions, num_items // 2)``.
4. User ``u`` picks ``n_u`` distinct items from ``softmax(l_u)`` without replacement via the
   Gumbel top-k trick (users processed in memory-bounded chunks).
5. An item nobody picked is given to one user sampled from the softmax over users of that
   item's preference logits, so every item id occurs and ``num_items`` is exact.
6. Modality ``m`` features: ``x_i^m = A_m c_i + B_m s_i^m + C_m n_i^m + noise_std * eps`` with
   Gaussian maps and ``n_i^m`` (``noise_dim``) a preference-irrelevant latent of that modality
   only, stored as float32 ``[num_items, dim_m]``.
7. ``x_label`` comes from :func:`~pyg_dhmrec.data.split.split_per_user` with the same seed.

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
# Max float32 elements of one [users, items] score block (16 MiB) during item draws.
_CHUNK_ELEMENTS = 1 << 22
_META_FILE = "meta.json"

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

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 2:
            raise ValueError("need num_users >= 1 and num_items >= 2")
        if not 1 <= self.min_user_interactions < self.num_items:
            raise ValueError("min_user_interactions must lie in [1, num_items)")
        if self.num_interactions < 0:
            raise ValueError("num_interactions must be non-negative")
        if not self.modalities:
            raise ValueError("at least one modality is required")
        for name, dim in self.modalities.items():
            if not name or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"modality {name!r} needs a non-empty name and a dim >= 1")
        dims = (self.common_dim, self.specific_dim, self.id_dim, self.noise_dim)
        if min(dims) < 0 or self.latent_dim < 1:
            raise ValueError("latent dims must be >= 0 with a positive total")
        if self.noise_std < 0 or self.popularity_sigma < 0 or self.activity_sigma < 0:
            raise ValueError("noise_std, popularity_sigma and activity_sigma must be >= 0")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")

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


def _draw_items(
    config: SyntheticConfig,
    user_latent: np.ndarray,
    item_latent: np.ndarray,
    log_popularity: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``counts[u]`` distinct items per user from ``softmax(l_u)`` (Gumbel top-k)."""
    rng = np.random.default_rng([config.seed, _STREAM_DRAW])
    num_items = config.num_items
    scale = 1.0 / (math.sqrt(config.latent_dim) * config.temperature)
    p = (user_latent * scale).astype(np.float32)
    z_t = np.ascontiguousarray(item_latent.T, dtype=np.float32)
    log_pop = log_popularity.astype(np.float32)

    # Users of similar activity share a chunk so each chunk's top-k width stays tight.
    order = np.argsort(counts, kind="stable")
    rows = max(1, _CHUNK_ELEMENTS // num_items)
    users, items = [], []
    for start in range(0, order.size, rows):
        idx = order[start : start + rows]
        k = counts[idx]
        k_max = int(k.max())
        keys = p[idx] @ z_t
        keys += log_pop
        # logit - log(Exp(1)) is logit + Gumbel(0, 1) noise.
        with np.errstate(divide="ignore"):
            keys -= np.log(rng.standard_exponential(keys.shape, dtype=np.float32))
        top = np.argpartition(keys, num_items - k_max, axis=1)[:, num_items - k_max :]
        top_keys = np.take_along_axis(keys, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_keys, axis=1, kind="stable"), axis=1)
        users.append(np.repeat(idx, k))
        items.append(top[np.arange(k_max) < k[:, None]])
    user = np.concatenate(users)
    item = np.concatenate(items).astype(np.int64)

    missing = np.flatnonzero(np.bincount(item, minlength=num_items) == 0)
    if missing.size:
        # Popularity is constant per item, so only the preference term matters here.
        cols = max(1, _CHUNK_ELEMENTS // config.num_users)
        owners = []
        for start in range(0, missing.size, cols):
            block = p @ z_t[:, missing[start : start + cols]]
            with np.errstate(divide="ignore"):
                block -= np.log(rng.standard_exponential(block.shape, dtype=np.float32))
            owners.append(np.argmax(block, axis=0))
        user = np.concatenate([user, np.concatenate(owners)])
        item = np.concatenate([item, missing])

    order = np.lexsort((item, user))
    return user[order].astype(np.int64), item[order]


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
    x += np.float32(config.noise_std) * rng.standard_normal(x.shape, dtype=np.float32)
    return x.astype(np.float32, copy=False), noise_latent


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
    return json.loads(json.dumps(asdict(config)))


def _expected_files(folder: Path, name: str, config: SyntheticConfig) -> list[Path]:
    files = [folder / f"{name}.inter", folder / _META_FILE]
    return files + [folder / f"{m}_feat.npy" for m in _modality_order(config)]


def generate_synthetic(folder: Path, name: str, config: SyntheticConfig) -> None:
    """Sample from ``config`` and write ``<name>.inter``, features and ``meta.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # meta.json marks a finished folder: drop it first, write it last.
    (folder / _META_FILE).unlink(missing_ok=True)
    data = sample_synthetic(config)

    rows = zip(data.user.tolist(), data.item.tolist(), data.label.tolist())
    text = "userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows)
    write_text(folder / f"{name}.inter", text)
    for modality, x in data.features.items():
        write_npy(folder / f"{modality}_feat.npy", x)

    meta = {
        "generator": "pyg_dhmrec.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "name": name,
        "config": _config_json(config),
        "num_users": data.num_users,
        "num_items": data.num_items,
        "num_interactions": int(data.user.size),
        "split": data.split_counts(),
    }
    write_json(folder / _META_FILE, meta)


def ensure_synthetic(
    folder: Path,
    name: str,
    config: SyntheticConfig,
    log: Callable[[str], Any] = print,
) -> bool:
    """Generate ``folder`` unless it already holds this exact config; True if (re)generated."""
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
    log(f"generating synthetic dataset {name!r} in {folder}: {reason}")
    generate_synthetic(folder, name, config)
    return True
