"""LayerGCN (Zhou et al., ICDE 2023): layer-refined graph convolution for recommendation."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import DegreeSensitiveEdgeDropout
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import (
    check_choice,
    check_fraction,
    check_int,
    check_nonnegative,
)
from pyg_dhmrec.nn import LightConv, bpr_loss, squared_l2_penalty

#: Edge sampling schemes of the pruned training graph (see :class:`LayerGCN`).
PRUNING_MODES = ("alternate", "degree", "uniform")
#: Lower bound of the norm product in the cosine similarity (as in ``F.cosine_similarity``).
EPS = 1e-8


class LayerRefinedPropagation(torch.nn.Module):
    r"""LayerGCN's propagation: every hop is rescaled, per node, by its cosine similarity to
    the ego (layer-0) embedding, and the refined hop is what the next hop propagates.

    .. math::
        \tilde{E}^{(l+1)} = \hat{A} E^{(l)}, \qquad
        a_v^{(l+1)} = \cos\big(\tilde{e}_v^{(l+1)}, e_v^{(0)}\big), \qquad
        e_v^{(l+1)} = a_v^{(l+1)}\, \tilde{e}_v^{(l+1)}, \qquad
        E = \sum_{l=1}^{L} E^{(l)}

    The ego layer is left out of the readout :math:`E`; a node whose propagated vector is
    zero (no kept edge) gets :math:`a_v = 0`.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.conv = LightConv(symmetric=True)

    def reset_parameters(self) -> None:
        pass  # parameter-free

    def layers(self, ego: Tensor, adj: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The refined layers :math:`E^{(1..L)}` and their weights :math:`a^{(1..L)}` ``[N]``."""
        # Hand-written cosine: F.cosine_similarity normalises both [N, d] inputs first,
        # which made it cost as much as the sparse products on a Baby-sized graph.
        ego_norm = torch.linalg.vector_norm(ego, dim=-1)
        out, layers, weights = ego, [], []
        for _ in range(self.num_layers):
            hop = self.conv(out, adj)
            norm = torch.linalg.vector_norm(hop, dim=-1) * ego_norm
            weight = (hop * ego).sum(-1) / norm.clamp_min(EPS)
            out = weight.unsqueeze(-1) * hop
            layers.append(out)
            weights.append(weight)
        return layers, weights

    def forward(self, ego: Tensor, adj: Tensor) -> Tensor:
        layers = self.layers(ego, adj)[0]
        return sum(layers[1:], layers[0])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_layers={self.num_layers})"


class _AlternatingEdgeDropout(DegreeSensitiveEdgeDropout):
    """:class:`DegreeSensitiveEdgeDropout` whose draws may be uniform, every draw or every
    second one (LayerGCN's published implementation alternates, degree-sensitive first)."""

    def __init__(self, *args, mode: str) -> None:
        super().__init__(*args)
        self.mode = mode
        self.draws = 0  # draws so far; the parity picks the scheme in "alternate" mode

    def next_is_uniform(self) -> bool:
        return self.mode == "uniform" or (self.mode == "alternate" and self.draws % 2 == 1)

    def sample(self) -> Tensor:
        uniform = self.next_is_uniform()
        self.draws += 1
        if not uniform or self.num_keep == 0:
            return super().sample()
        num_edges = self.edge_index.size(1)
        idx = torch.randperm(num_edges, device=self.edge_index.device)[: self.num_keep]
        return self.edge_index[:, idx.sort().values]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"


class LayerGCN(Recommender):
    r"""LayerGCN: light graph convolution with layer refinement and degree-sensitive edge
    dropout (Zhou, Lin, Liu & Miao, ICDE 2023).

    The paper's text was not at hand offline, so its equation numbers are not cited; the
    equations below and every choice marked *choice* follow the authors' published code
    (ImRec, and MMRec's ``layergcn.py``, which produced the published Baby/Sports numbers).

    **Propagation** (:class:`LayerRefinedPropagation`). On the symmetric-normalised user-item
    graph :math:`\hat{A} = D^{-1/2} A D^{-1/2}`, every hop :math:`\hat{A} E^{(l)}` is scaled per
    node by :math:`a_v^{(l+1)} = \cos(\hat{A} E^{(l)}, E^{(0)})_v`, its cosine similarity to
    the ego embedding, and the scaled layer is what the next hop propagates; the final
    embedding is the sum of the refined layers :math:`1..L`. *Choices*: the ego layer is not
    part of the sum (the paper's point is that readouts weighting the ego layer collapse onto
    it); the weights :math:`a` are not detached, so gradients flow through them; they are
    signed (a hop pointing away from the ego embedding is flipped), so a hop orthogonal to
    it contributes nothing, and neither do the later hops built on it.

    **Edge dropout** (training only). Each epoch :math:`\lfloor E(1-\rho) \rfloor` train edges
    are kept without replacement and the kept graph is re-normalised on its own degrees; the
    full graph is used at evaluation. With ``pruning="degree"`` the edges are drawn with
    probability :math:`\propto 1/\sqrt{d_u d_i}`, which is exactly
    :class:`DegreeSensitiveEdgeDropout` (same weights, count and re-normalisation; the
    paper's "degree-sensitive" pruning). *Choice*: the default ``"alternate"`` follows the
    authors' code, which does not draw this way every epoch but alternates a
    degree-sensitive draw (epochs 1, 3, ...) with a uniform one (epochs 2, 4, ...);
    ``"uniform"`` is plain random edge dropout.

    **Loss.** ``bpr``: BPR on the final embeddings; ``reg``: ``reg_weight`` times the squared
    L2 norm of the batch's ego embeddings, :math:`\frac{1}{2}\sum_b (\|e_u\|^2 + \|e_i\|^2 +
    \|e_j\|^2)`. *Choice*: as in the authors' code both are sums over the batch ``B``, not
    means (LightGCN here uses means). Their ratio, hence the meaning of ``reg_weight``, is
    the same either way; the common factor ``B`` matters only through Adam's
    :math:`\epsilon` and the smaller last batch, and is kept for fidelity. Xavier-uniform
    initialisation.

    Args:
        data: the dataset graph; its train edges form :math:`A`.
        embedding_dim: size ``d`` of the embeddings.
        num_ui_layers: :math:`L \ge 1`.
        reg_weight: weight of the squared L2 regulariser (``>= 0``).
        edge_dropout: fraction :math:`\rho \in [0, 1)` of train edges dropped per epoch.
        pruning: ``"alternate"``, ``"degree"`` or ``"uniform"`` edge sampling.
    """

    loss_parts = ("bpr", "reg")

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 4,
        reg_weight: float = 1e-3,
        edge_dropout: float = 0.1,
        pruning: str = "alternate",
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        check_choice("pruning", pruning, PRUNING_MODES)
        check_fraction("edge_dropout", edge_dropout, include_1=False)
        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.propagation = LayerRefinedPropagation(check_int("num_ui_layers", num_ui_layers, 1))
        self.pruning = _AlternatingEdgeDropout(
            self.train_edge_index(data), self.num_users, self.num_items, edge_dropout, mode=pruning
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    def on_train_epoch_start(self) -> None:
        if self.pruning.dropout > 0.0:
            self.pruning.resample()

    def forward(self) -> Embeddings:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.propagation(ego, self.pruning())
        return Embeddings(*out.split([self.num_users, self.num_items]))

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        size = batch.user.numel()  # means -> sums over the batch, as in the authors' code
        reg = squared_l2_penalty(
            self.user_embedding(batch.user),
            self.item_embedding(batch.pos_item),
            self.item_embedding(batch.neg_item),
        )
        return {"bpr": size * bpr_loss(pos, neg), "reg": size * self.reg_weight * reg}
