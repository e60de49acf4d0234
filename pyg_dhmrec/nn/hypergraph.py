"""Hypergraphs with learned soft incidence: dependencies, message passing and cross-view
contrast (as in LGMRec, Guo et al., AAAI 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_dhmrec.nn._checks import check_dense, check_ids_on_cpu, check_index
from pyg_dhmrec.nn.losses import factored_cross_entropy


def relaxed_dependencies(logits: Tensor, temperature: float, noise: bool = False) -> Tensor:
    r"""Row-wise soft assignment of nodes to hyperedges (LGMRec Eq. 8, Gumbel-softmax).

    .. math::
        \tilde{h}_{n} = \mathrm{softmax}\Big(\frac{h_{n} + g_{n}}{\tau}\Big), \qquad
        g_{n} = \log \delta - \log(1 - \delta), \quad \delta \sim \mathcal{U}(0, 1)^{A}

    Every row of the result is a distribution over the :math:`A` hyperedges. The noise
    :math:`g` (the paper's :math:`\log\delta - \log(1-\delta)`, a logistic sample) is added only
    with ``noise=True`` (training); without it the rows are the plain tempered softmax, so
    evaluation is deterministic. Noise is drawn from torch's global RNG.

    Args:
        logits: ``[N, A]`` node-hyperedge scores :math:`h`.
        temperature: :math:`\tau > 0`.
        noise: add the relaxation noise :math:`g`.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [num_nodes, num_hyperedges], got {list(logits.shape)}")
    check_dense("logits", logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if noise:
        eps = torch.finfo(logits.dtype).eps
        delta = torch.rand_like(logits).clamp(eps, 1.0 - eps)  # keeps both logs finite
        logits = logits + torch.log(delta) - torch.log1p(-delta)
    return torch.softmax(logits / temperature, dim=-1)


class HypergraphPropagation(torch.nn.Module):
    r"""Parameter-free node -> hyperedge -> node message passing (LGMRec Eq. 9).

    With the ``[N, A]`` dependency (soft incidence) matrix :math:`H` of the propagated nodes and
    an optional ``[M, A]`` matrix :math:`H'` of other nodes that only read the hyperedges,

    .. math::
        X^{(h+1)} = H \, (H^\top X^{(h)}), \quad h = 0, \dots, L-1, \qquad
        Y = H' \, (H^\top X^{(L-1)})

    i.e. every layer gathers the nodes into the hyperedges (:math:`H^\top X`) and scatters the
    hyperedge messages back; the readers (e.g. users, whose dependencies come from their
    interactions) take the messages of the last layer. Returns :math:`(X^{(L)}, Y)` (``Y`` is
    ``None`` without :math:`H'`). No normalisation is applied: dependency rows from
    :func:`relaxed_dependencies` are already distributions. The products are dense, cost
    :math:`O((N + M) A d)` per layer.

    Args:
        num_layers: :math:`L \ge 1`.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
        self.num_layers = num_layers

    def reset_parameters(self) -> None:
        pass  # parameter-free

    def forward(
        self,
        x: Tensor,
        incidence: Tensor,
        readers: Tensor | None = None,
        return_messages: bool = False,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor]:
        r"""``x`` ``[N, d]``, ``incidence`` ``[N, A]``, ``readers`` ``[M, A]`` or ``None``.
        With ``return_messages``, also the last layer's ``[A, d]`` hyperedge messages
        :math:`H^\top X^{(L-1)}`: then :math:`X^{(L)} = H\,(H^\top X^{(L-1)})` and
        :math:`Y` are rank-:math:`A` products of known factors."""
        check_dense("x", x, dim=2)
        if incidence.dim() != 2 or incidence.size(0) != x.size(0):
            raise ValueError(
                f"incidence must be [num_nodes={x.size(0)}, num_hyperedges], "
                f"got {list(incidence.shape)}"
            )
        if readers is not None and (readers.dim() != 2 or readers.size(1) != incidence.size(1)):
            raise ValueError(
                f"readers must be [num_readers, num_hyperedges={incidence.size(1)}], "
                f"got {list(readers.shape)}"
            )
        for name, t in (("incidence", incidence), ("readers", readers)):
            if t is not None and t.dtype != x.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but x {x.dtype}; convert one of them")
        out, read = x, None
        for _ in range(self.num_layers):
            edges = incidence.t() @ out  # [A, d] hyperedge messages
            out = incidence @ edges
        if readers is not None:
            read = readers @ edges
        return (out, read, edges) if return_messages else (out, read)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_layers={self.num_layers})"


def hypergraph_contrastive_loss(
    anchor: Tensor,
    positive: Tensor,
    index: Tensor,
    temperature: float,
    positive_factors: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    r"""Cross-view InfoNCE of LGMRec's hypergraph contrastive loss (Eq. 11), summed over a batch.

    .. math::
        \mathcal{L} = -\sum_{b=1}^{B} \log
        \frac{\exp(s(a_{n_b}, p_{n_b}) / \tau)}{\sum_{n=1}^{N} \exp(s(a_{n_b}, p_n) / \tau)},
        \qquad s(x, y) = \frac{x^\top y}{\lVert x \rVert \lVert y \rVert}

    ``anchor`` and ``positive`` are two views ``[N, d]`` of the same ``N`` nodes; the batch
    ``index`` ``[B]`` picks the anchors, and every node of the other view is a candidate (not
    only the batch's, unlike :func:`~pyg_dhmrec.nn.info_nce`). Summed, not averaged, over the
    batch, as in the paper's sum over nodes; duplicates in ``index`` count once each.

    ``positive_factors`` ``(H [N, A], M [A, d])`` with ``positive == H @ M`` (the output of
    :class:`HypergraphPropagation` with ``return_messages``) gives the same value through the
    rank-:math:`A` logits :math:`(\hat{a} M^\top)(H / \lVert p \rVert)^\top`: the
    ``[B, N]`` products cost :math:`O(B N A)` instead of :math:`O(B N d)`. The cross-entropy
    is :func:`~pyg_dhmrec.nn.losses.factored_cross_entropy`.
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"anchor and positive must be two [N, d] views of one shape, got "
            f"{list(anchor.shape)} and {list(positive.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_dense("anchor", anchor)
    check_dense("positive", positive)
    check_index("index", index)
    check_ids_on_cpu("index", index, anchor.size(0))
    # 1/tau scales the [B, d] anchors, not the [B, N] logits
    query = F.normalize(anchor[index], dim=-1) / temperature
    norm = torch.linalg.vector_norm(positive, dim=-1, keepdim=True).clamp_min(1e-12)
    if positive_factors is None:
        # F.normalize's division; cosine logits at 1/tau are bounded by 1/tau
        return factored_cross_entropy(query, positive / norm, index, 1.0 / temperature)
    incidence, messages = positive_factors
    if (
        incidence.dim() != 2
        or incidence.size(0) != positive.size(0)
        or messages.shape
        != (
            incidence.size(1),
            positive.size(1),
        )
    ):
        raise ValueError(
            f"positive_factors must be (H [N={positive.size(0)}, A], M [A, d={positive.size(1)}]), "
            f"got {list(incidence.shape)} and {list(messages.shape)}"
        )
    return factored_cross_entropy(query @ messages.t(), incidence / norm, index, 1.0 / temperature)
