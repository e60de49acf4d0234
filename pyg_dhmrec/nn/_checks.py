"""Cheap input checks (shape, dtype, layout: no value is read, so no device wait) shared by the
building blocks, so a wrong input is an error naming the argument instead of a torch error
deep inside a product."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def shape(x: Tensor) -> list[int]:
    return list(x.shape)


def check_dense(name: str, x: object, dim: int | None = None, floating: bool = True) -> None:
    """``x`` is a strided (dense) tensor, floating point unless ``floating=False``, with
    ``dim`` dimensions when given."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {x.layout}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor, got shape {shape(x)}")


def check_index(name: str, index: object, dim: int = 1) -> None:
    """``index`` is a dense integer tensor with ``dim`` dimensions (int32 and int64 both index)."""
    if not isinstance(index, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(index).__name__}")
    if index.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {index.layout}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {index.dtype}")
    if index.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor, got shape {shape(index)}")


def check_same_dtype(names: Sequence[str], tensors: Sequence[Tensor]) -> None:
    """One dtype for tensors that meet in one product (torch would not promote them)."""
    dtypes = [t.dtype for t in tensors]
    if any(d != dtypes[0] for d in dtypes):
        listed = ", ".join(f"{n} {d}" for n, d in zip(names, dtypes))
        raise TypeError(f"{' and '.join(names)} must have one dtype, got {listed}")


def check_not_empty(name: str, x: Tensor) -> None:
    """A mean over no rows is NaN: an empty batch is an error, not a NaN loss."""
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {shape(x)}); a mean over no rows is undefined")


def check_rows(
    name: str, x: object, channels: int, rows: int | None = None, dtype: torch.dtype | None = None
) -> None:
    """``x`` is a dense ``[rows, channels]`` floating tensor (any row count when ``rows`` is
    None) of the layer's parameter ``dtype``."""
    check_dense(name, x, dim=2)
    assert isinstance(x, Tensor)
    if x.size(1) != channels or (rows is not None and x.size(0) != rows):
        expected = f"[{'N' if rows is None else rows}, {channels}]"
        raise ValueError(f"{name} must have shape {expected}, got {shape(x)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the layer's parameters {dtype}; convert one of "
            f"them (layer.to({x.dtype}))"
        )


def check_views(
    name: str | Sequence[str],
    views: Sequence[Tensor],
    channels: int,
    dtype: torch.dtype | None = None,
) -> None:
    """Every view is a dense ``[N, channels]`` floating tensor, one ``N`` for all; ``name`` is
    the sequence's name (``views[i]`` in errors) or one name per tensor."""
    if isinstance(views, Tensor):
        raise TypeError(f"{name} must be a sequence of [N, {channels}] tensors, got one tensor")
    names = [f"{name}[{i}]" for i in range(len(views))] if isinstance(name, str) else name
    rows = None
    for label, view in zip(names, views):
        check_rows(label, view, channels, rows, dtype)
        rows = view.size(0)


def check_ids_on_cpu(name: str, index: Tensor, upper: int) -> None:
    """Ids in ``[0, upper)``, checked on the CPU only: there the check is one cheap pass, while
    on an accelerator it would make the host wait for the device (a device-side assert fires
    there instead)."""
    if index.device.type == "cpu" and index.numel():
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= upper:
            bad = low if low < 0 else high
            raise ValueError(f"{name} holds id {bad}, out of range [0, {upper})")
