"""Neighbour routing: per-user prototypes refined towards the content of their items."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import softmax

from pyg_dhmrec.nn._checks import check_dense, check_ids_on_cpu, check_index, check_rows, shape
from pyg_dhmrec.nn.normalize import l2_normalize
from pyg_dhmrec.nn.sparse_pattern import SparsePattern

__all__ = ["PrototypeRouting", "neighborhood_affinity"]


def neighborhood_affinity(
    x_source: Tensor, x_target: Tensor, edge_index: Tensor, num_targets: int
) -> Tensor:
    r"""Affinity of every edge :math:`j \to i`, normalised over the target's in-edges,

    .. math::
        a_{ji} = \frac{\exp(x_j^\top x_i)}{\sum_{k \in \mathcal{N}(i)} \exp(x_k^\top x_i)}
        \in [0, 1] .

    Args:
        x_source: ``[N_s, d]`` source node vectors.
        x_target: ``[N_t, d]`` target node vectors.
        edge_index: ``[2, E]`` (source, target) pairs.
        num_targets: ``N_t``.

    Returns:
        ``[E]`` affinities; those into one target sum to 1.
    """
    if x_source.size(-1) != x_target.size(-1):
        raise ValueError(
            f"source and target vectors must have one width, got {x_source.size(-1)} and "
            f"{x_target.size(-1)}"
        )
    check_dense("x_source", x_source, dim=2)
    check_dense("x_target", x_target, dim=2)
    check_index("edge_index", edge_index, dim=2)
    if edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {shape(edge_index)}")
    check_ids_on_cpu("edge_index[0] (sources)", edge_index[0], x_source.size(0))
    # a target is a row of x_target and one of the num_targets softmax groups
    check_ids_on_cpu("edge_index[1] (targets)", edge_index[1], min(num_targets, x_target.size(0)))
    source, target = edge_index
    logits = (x_source[source] * x_target[target]).sum(-1)
    return softmax(logits, target, num_nodes=num_targets)


class PrototypeRouting(torch.nn.Module):
    r"""GRCN's prototypical network (Wei et al., MM 2020, graph refining layer): each user's
    prototype :math:`p_u` in one modality is moved towards the content :math:`i` of its items
    for ``num_iterations`` routing steps,

    .. math::
        \alpha_{ui} = \operatorname{softmax}_{i \in \mathcal{N}(u)}(p_u^\top i), \qquad
        p_u \leftarrow \frac{p_u + \sum_{i \in \mathcal{N}(u)} \alpha_{ui}\, i}
        {\lVert p_u + \sum_{i \in \mathcal{N}(u)} \alpha_{ui}\, i \rVert_2} .

    The prototypes are L2-normalised before the first step, so :math:`p_u^\top i` is a cosine
    when the item vectors are normalised too. A user without items keeps its (normalised)
    prototype. Parameter-free: the prototypes and item vectors are inputs.
    """

    def __init__(self, num_iterations: int) -> None:
        super().__init__()
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int):
            raise ValueError(f"num_routing must be an int >= 0, got {num_iterations!r}")
        if num_iterations < 0:
            raise ValueError(f"num_routing must be an int >= 0, got {num_iterations!r}")
        self.num_iterations = num_iterations

    def reset_parameters(self) -> None:
        pass  # parameter-free

    def forward(self, prototypes: Tensor, items: Tensor, edges: Tensor | SparsePattern) -> Tensor:
        """``prototypes`` ``[U, d]``, ``items`` ``[I, d]``, ``edges`` the (user, item) pairs as
        a ``[2, E]`` edge index or a :class:`SparsePattern` of shape ``[U, I]`` (built once by
        the caller: the fast path) -> the refined, normalised ``[U, d]`` prototypes.

        Each step is one per-edge dot product and one product with the sparse matrix of
        :math:`\alpha` (:class:`SparsePattern`), no ``[E, d]`` gathered tensor."""
        check_dense("prototypes", prototypes, dim=2)
        check_rows("items", items, prototypes.size(1))
        num_users = prototypes.size(0)
        if isinstance(edges, SparsePattern) and (edges.num_rows, edges.num_cols) != (
            num_users,
            items.size(0),
        ):
            raise ValueError(
                f"edges must be a [{num_users}, {items.size(0)}] pattern (users, items), got "
                f"[{edges.num_rows}, {edges.num_cols}]"
            )
        if not isinstance(edges, SparsePattern):
            edges = SparsePattern(edges, num_users, items.size(0)).to(items.device)
        out = l2_normalize(prototypes)
        for _ in range(self.num_iterations):
            # The prototype is the target: items route into their users.
            weight = softmax(edges.dot(out, items), edges.row, num_nodes=num_users)
            out = l2_normalize(out + edges.matmul(weight, items))
        return out

    def extra_repr(self) -> str:
        return f"num_iterations={self.num_iterations}"
