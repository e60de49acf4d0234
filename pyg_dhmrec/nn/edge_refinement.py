"""Learned weights on a fixed edge set: GRCN's confidence-weighted soft pruning."""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_dhmrec.nn._checks import check_dense, check_ids_on_cpu, check_index, shape

__all__ = ["ConfidenceEdgeWeights"]


class ConfidenceEdgeWeights(torch.nn.Module):
    r"""Edge weights of a fixed edge set from per-modality affinities and a learned per-node
    modality confidence (GRCN, Wei et al., MM 2020, the pruning step of its graph refining layer):

    .. math::
        w_{ji} = \max_{m} \; \sigma(c_{j,m})\, a^m_{ji} \in [0, 1],

    where :math:`a^m_{ji} \in [0, 1]` is the affinity of edge :math:`j \to i` in modality
    :math:`m` (e.g. :func:`~pyg_dhmrec.nn.routing.neighborhood_affinity`) and :math:`c_{j,m}`
    the learned confidence of the sending node :math:`j` in modality :math:`m`. An edge whose
    content disagrees with the receiving node in every modality gets a small weight: it is
    pruned softly, never removed.

    *Choice*: with ``activation="sigmoid"`` (the default) the confidence passes through a
    sigmoid so that every weight stays in :math:`[0, 1]`. GRCN's code (the authors' and
    MMRec's) multiplies by the raw confidence and clips negatives,
    :math:`w_{ji} = \mathrm{relu}(\max_m c_{j,m}\, a^m_{ji})`, which lets weights exceed 1
    and prunes an edge fully when every confidence of its sender is negative:
    ``activation="relu"`` computes that.

    Args:
        num_nodes: number of nodes that send messages (one confidence row each).
        num_modalities: :math:`M \ge 1`.
        activation: ``"sigmoid"`` or ``"relu"``, as above.
    """

    activations = ("sigmoid", "relu")

    def __init__(self, num_nodes: int, num_modalities: int, activation: str = "sigmoid") -> None:
        super().__init__()
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
            raise ValueError(f"num_nodes must be an int >= 0, got {num_nodes!r}")
        if num_modalities < 1:
            raise ValueError(f"ConfidenceEdgeWeights needs >= 1 modality, got {num_modalities}")
        if activation not in self.activations:
            raise ValueError(
                f"ConfidenceEdgeWeights activation must be one of {self.activations}, "
                f"got {activation!r}"
            )
        self.activation = activation
        self.confidence = torch.nn.Parameter(torch.empty(num_nodes, num_modalities))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.confidence)

    def forward(self, affinity: Tensor, source: Tensor) -> Tensor:
        """``affinity`` ``[E, M]`` per-modality edge affinities in [0, 1], ``source`` ``[E]``
        the sending node of each edge -> ``[E]`` edge weights (in [0, 1] for ``"sigmoid"``)."""
        if affinity.dim() != 2 or affinity.size(1) != self.confidence.size(1):
            raise ValueError(
                f"affinity must have shape [E, {self.confidence.size(1)}], got "
                f"{list(affinity.shape)}"
            )
        check_dense("affinity", affinity)
        check_index("source", source)
        if source.size(0) != affinity.size(0):
            raise ValueError(
                f"source must have one entry per edge, [{affinity.size(0)}], got {shape(source)}"
            )
        check_ids_on_cpu("source", source, self.confidence.size(0))
        if self.activation == "relu":
            return torch.relu((self.confidence[source] * affinity).amax(dim=-1))
        return (torch.sigmoid(self.confidence[source]) * affinity).amax(dim=-1)

    def extra_repr(self) -> str:
        return (
            f"num_nodes={self.confidence.size(0)}, num_modalities={self.confidence.size(1)}, "
            f"activation={self.activation!r}"
        )
