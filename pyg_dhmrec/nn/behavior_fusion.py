"""Behaviour-aware fusion of modality views into shared and specific parts (after MGCN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from pyg_dhmrec.nn._checks import check_rows, check_views


class FusionParts(NamedTuple):
    """The pieces of :class:`BehaviorAwareFusion`, for inspection and tests."""

    weights: Tensor  # [N, M] attention over the modalities, rows sum to 1
    shared: Tensor  # [N, d] modality-shared part E_s
    specific: list[Tensor]  # M x [N, d] modality-specific parts E_m - E_s
    preferences: list[Tensor]  # M x [N, d] behaviour preference gates P_m in (0, 1)


class BehaviorAwareFusion(torch.nn.Module):
    r"""Fuses M modality views with attention, steered by a behaviour (ID) embedding.

    For views :math:`E_1, \dots, E_M` (one row per node) and the behaviour embedding
    :math:`E_{id}`:

    .. math::
        \alpha_m = \operatorname{softmax}_m\big(q^\top \tanh(W E_m + b)\big), \qquad
        E_s = \sum_m \alpha_m E_m, \qquad \tilde{E}_m = E_m - E_s,

        P_m = \sigma(W_m^{p} E_{id} + b_m^{p}), \qquad
        E_{mul} = \frac{1}{M + 1}\Big(E_s + \sum_m P_m \odot \tilde{E}_m\Big)

    The attention scorer (:math:`W, b, q`; :math:`q` without bias) is shared by the modalities,
    the softmax runs per node over the M modalities; each modality has its own preference gate.
    So :math:`E_s + \tilde{E}_m = E_m` and :math:`\sum_m \alpha_m \tilde{E}_m = 0`. The final
    mean over the :math:`M + 1` parts is MGCN's released form (``(E_s + P_v \odot \tilde E_v +
    P_t \odot \tilde E_t) / 3`` for two modalities). Layers use PyTorch's default
    initialisation, as MGCN's code does.

    Args:
        channels: embedding size :math:`d`.
        num_modalities: number of views M (>= 1).
    """

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        self.num_modalities = num_modalities
        self.attention_proj = torch.nn.Linear(channels, channels)
        self.attention_query = torch.nn.Linear(channels, 1, bias=False)
        self.preference = torch.nn.ModuleList(
            torch.nn.Linear(channels, channels) for _ in range(num_modalities)
        )

    def reset_parameters(self) -> None:
        self.attention_proj.reset_parameters()
        self.attention_query.reset_parameters()
        for layer in self.preference:
            layer.reset_parameters()

    def attention(self, views: Sequence[Tensor]) -> Tensor:
        """``[N, M]`` weights :math:`\\alpha_m`, a softmax over the modalities per node."""
        self._check(views)
        scores = [self.attention_query(torch.tanh(self.attention_proj(v))) for v in views]
        return torch.softmax(torch.cat(scores, dim=-1), dim=-1)

    def decompose(self, views: Sequence[Tensor], behavior: Tensor) -> FusionParts:
        weights = self.attention(views)
        check_rows("behavior", behavior, views[0].size(1), views[0].size(0), views[0].dtype)
        shared = sum(weights[:, m : m + 1] * v for m, v in enumerate(views))
        specific = [v - shared for v in views]
        preferences = [torch.sigmoid(gate(behavior)) for gate in self.preference]
        return FusionParts(weights, shared, specific, preferences)

    def forward(self, views: Sequence[Tensor], behavior: Tensor) -> Tensor:
        """``views``: M tensors ``[N, d]``; ``behavior``: ``[N, d]``; returns ``[N, d]``."""
        parts = self.decompose(views, behavior)
        gated = sum(p * s for p, s in zip(parts.preferences, parts.specific))
        return (parts.shared + gated) / (self.num_modalities + 1)

    def _check(self, views: Sequence[Tensor]) -> None:
        if len(views) != self.num_modalities:
            raise ValueError(f"expected {self.num_modalities} modality views, got {len(views)}")
        weight = self.attention_proj.weight
        check_views("views", views, weight.size(1), weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.attention_proj.in_features}, num_modalities={self.num_modalities}"
