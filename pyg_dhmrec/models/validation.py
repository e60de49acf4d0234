"""Checks for model settings: each names the field, the expected range and the value it got.

The models check their constructor arguments with these, so one bad setting reads the same in
each of them (``embedding_dim must be an int >= 1, got 0``). A ``bool`` is refused wherever a number
is expected: YAML's ``true`` is an ``int`` to Python and would otherwise pass as ``1``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

#: Largest count of stacked layers or iterations a model accepts (``num_routing``,
#: ``num_hyper_layers``, ...): published settings use at most a handful; a huge count never
#: finishes (or allocates one block per layer).
MAX_LAYERS = 64
#: Largest width of a hidden layer or projection (``feature_dim``, ``hidden_dim``, ...): 16
#: times config.py's ``embedding_dim`` bound (4096); published widths stay below 1024, and a
#: huge one allocates terabytes.
MAX_WIDTH = 65536
#: Largest number of diffusion steps: DDPM's 1000 (DiffMM publishes 5).
MAX_DIFFUSION_STEPS = 1000


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool`` (not ``0``, ``1`` or a string such as ``"false"``)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool or float) ``>= low`` and,
    with ``high``, ``<= high`` (``num_routing must be in [0, 64], got 1000``)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return int(value)


def check_int_list(name: str, value: Any, low: int, high: int | None = None) -> list[int]:
    """Return ``value`` as a list of ``int`` if it is a non-empty list (or tuple) of integers
    (not bools or floats) ``>= low`` and, with ``high``, ``<= high`` (a list of layer widths)."""

    def fits(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, Integral):
            return False
        return low <= v and (high is None or v <= high)

    if not isinstance(value, (list, tuple)) or not value or not all(fits(v) for v in value):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be a non-empty list of ints {expected}, got {value!r}")
    return [int(v) for v in value]


def check_at_most(name: str, value: int, high: int, what: str) -> int:
    """Return ``value`` if it is ``<= high``; ``what`` says what ``high`` counts."""
    if value > high:
        raise ValueError(f"{name} must be <= {what} {high}, got {value!r}")
    return value


def _check_real(name: str, value: Any, expected: str) -> float:
    # A bool, a string or a tensor is not a setting value; NaN and inf make every loss NaN.
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number {expected}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {expected} and finite, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a finite number ``>= 0`` (a loss weight)."""
    number = _check_real(name, value, ">= 0")
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a finite number ``> 0`` (a temperature)."""
    number = _check_real(name, value, "> 0")
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_fraction(
    name: str, value: Any, *, include_0: bool = True, include_1: bool = True
) -> float:
    """Return ``value`` as a ``float`` if it lies in the unit interval with the ends asked for.

    A dropout probability is ``include_1=False`` (``[0, 1)``), a keep rate ``include_0=False``
    (``(0, 1]``), a mixing weight both ends (``[0, 1]``).
    """
    interval = f"{'[' if include_0 else '('}0, 1{']' if include_1 else ')'}"
    number = _check_real(name, value, f"in {interval}")
    low_ok = number >= 0 if include_0 else number > 0
    high_ok = number <= 1 if include_1 else number < 1
    if not (low_ok and high_ok):
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
