"""Per-user train/valid/test split following MMRec's convention.

Each user's interactions are shuffled with a seeded :class:`numpy.random.Generator` and cut
into consecutive train / valid / test blocks. The block sizes of a user with ``n``
interactions are:

* ``n >= RATIO_SPLIT_MIN`` (10): ``n_valid = round(n * ratios[1])`` and
  ``n_test = round(n * ratios[2])``, rounding halves *up* (``floor(x + 0.5)``, so ``n = 25``
  gives 19 / 3 / 3), each clipped so that valid and test keep at least one
  interaction and train keeps at least one; train gets the rest.
* ``3 <= n < RATIO_SPLIT_MIN``: ``n - 2`` train, 1 valid, 1 test.
* ``n == 2``: 1 train, 1 test, no valid (test is the more valuable held-out set).
* ``n == 1``: the single interaction is train (a user needs training signal first).

Every user with at least one interaction therefore has at least one train interaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["RATIO_SPLIT_MIN", "TRAIN", "VALID", "TEST", "split_per_user", "split_sizes"]

TRAIN, VALID, TEST = 0, 1, 2
RATIO_SPLIT_MIN = 10

# Guards against float artefacts such as 5 * 0.3 == 1.4999999999999998 before rounding.
_ROUND_EPS = 1e-9


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``ratios`` (3 positive finite values summing to 1) and return them."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3:
        raise ValueError(f"ratios must have 3 entries (train, valid, test), got {len(values)}")
    if not all(np.isfinite(v) and v > 0.0 for v in values):
        raise ValueError(f"ratios must be finite and strictly positive, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1, got {values} (sum {sum(values)})")
    return values  # type: ignore[return-value]


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """Round half away from zero for non-negative ``x`` (numpy's ``round`` is banker's)."""
    return np.floor(x + 0.5 + _ROUND_EPS).astype(np.int64)


def split_sizes(counts: np.ndarray, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Return ``[len(counts), 3]`` train/valid/test sizes for users with ``counts`` interactions."""
    _, r_valid, r_test = _check_ratios(ratios)
    n = np.asarray(counts, dtype=np.int64)
    if np.any(n < 0):
        raise ValueError("interaction counts must be non-negative")

    big = n >= RATIO_SPLIT_MIN
    # Ratio rule, clipped so that every block of a big user stays non-empty.
    n_test = np.clip(_round_half_up(n * r_test), 1, np.maximum(n - 2, 1))
    n_valid = np.clip(_round_half_up(n * r_valid), 1, np.maximum(n - 1 - n_test, 1))
    # Small-user rule: n-2 / 1 / 1 for n >= 3, 1 / 0 / 1 for n == 2, 1 / 0 / 0 for n == 1.
    small_valid = (n >= 3).astype(np.int64)
    small_test = (n >= 2).astype(np.int64)

    valid = np.where(big, n_valid, small_valid)
    test = np.where(big, n_test, small_test)
    return np.stack([n - valid - test, valid, test], axis=1)


def split_per_user(
    user: np.ndarray,
    num_users: int,
    seed: int,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
) -> np.ndarray:
    """Return the MMRec ``x_label`` (0 train, 1 valid, 2 test) of every interaction.

    ``user`` holds the user id of each interaction; the result is aligned with it. The
    assignment depends only on ``user`` (including its order), ``num_users`` and ``seed``.
    """
    user = np.asarray(user)
    if user.ndim != 1:
        raise ValueError(f"user must be one-dimensional, got shape {user.shape}")
    if user.size and not np.issubdtype(user.dtype, np.integer):
        raise TypeError(f"user ids must be integers, got dtype {user.dtype}")
    user = user.astype(np.int64, copy=False)
    if user.size and (user.min() < 0 or user.max() >= num_users):
        raise ValueError(f"user ids must lie in [0, {num_users})")

    counts = np.bincount(user, minlength=num_users)
    sizes = split_sizes(counts, ratios)

    rng = np.random.default_rng(seed)
    key = rng.random(user.size)
    # Sort by (user, random key): position inside a user's block is a uniform random rank.
    order = np.lexsort((key, user))
    sorted_user = user[order]
    starts = np.cumsum(counts) - counts
    rank = np.arange(user.size, dtype=np.int64) - starts[sorted_user]

    n_train = sizes[sorted_user, 0]
    n_train_valid = n_train + sizes[sorted_user, 1]
    sorted_label = np.where(rank < n_train, TRAIN, np.where(rank < n_train_valid, VALID, TEST))

    label = np.empty(user.size, dtype=np.int64)
    label[order] = sorted_label
    return label
