"""MICRO (Zhang et al., IEEE TKDE 2023): latent structure mining with contrastive modality
fusion for multimedia recommendation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings
from pyg_dhmrec.models.lattice import LATTICE, Graph
from pyg_dhmrec.models.validation import check_nonnegative, check_positive
from pyg_dhmrec.nn import ModalityAttention, chunked_info_nce

#: Anchors per chunk of the all-item contrastive loss (memory and speed only: one [N, 1024]
#: block is reused across chunks; on TikTok faster than the authors' 4096 rows at once).
CONTRASTIVE_CHUNK = 1024


@dataclass
class MICROEmbeddings(Embeddings):
    """:class:`Embeddings` plus each modality's item view :math:`h^m` and the fused view
    :math:`h` before normalisation (what the contrastive loss reads)."""

    modality_views: dict[str, Tensor] = field(default_factory=dict)
    fused_view: Tensor | None = None


class MICRO(LATTICE):
    r"""MICRO: LATTICE's latent item graphs per modality, fused by attention, with a
    contrastive loss between each modality view and the fused view.

    A subclass of :class:`~pyg_dhmrec.models.LATTICE`: the item graphs (Eqs. 1-6), their
    per-epoch caching (``graph_update``), the LightGCN backbone, the initialisation and the
    ``bpr`` / ``reg`` parts are LATTICE's own code; MICRO replaces LATTICE's graph mixing
    (Eq. 7 there) by attention over the views and adds the contrastive part.

    Equation numbers are those of the paper (arXiv 2111.00678).

    **Latent item graphs (Eqs. 1-6).** As :class:`~pyg_dhmrec.models.LATTICE`: per modality
    :math:`m`, the frozen weighted cosine top-k graph :math:`\tilde{S}^m` of the raw features
    (edge type ``('item', 'knn_<m>', 'item')``, :class:`AddItemKNNGraphs` with
    ``weighting="cosine"``), the learned graph :math:`\hat{A}^m` on
    :math:`\tilde{e}^m = W_m e^m + b_m` (:class:`LearnedKNNGraph`), and the skip connection
    :math:`\tilde{A}^m = (1-\lambda)\hat{A}^m + \lambda\tilde{S}^m`
    (:func:`skip_connected_graph`, :math:`\lambda` = ``frozen_graph_weight``). The raw
    features stay fixed (*choice*, as in this library's LATTICE). ``graph_update`` as LATTICE:
    ``"epoch"`` (the authors' code) learns the graphs with gradient on the first training
    forward of an epoch and reuses them detached for the rest of it.

    **Modality views (Eq. 7).** Unlike LATTICE, the graphs are not mixed: each modality
    propagates the item ID embeddings over its own graph, :math:`h^m = (\tilde{A}^m)^L E_I`
    (``num_ii_layers``).

    **Attention fusion (Eqs. 8-9).** :math:`\alpha^m_i = \mathrm{softmax}_m\big(q^\top
    \tanh(W h^m_i + b)\big)`, :math:`h_i = \sum_m \alpha^m_i h^m_i`
    (:class:`ModalityAttention`, shared across modalities).

    **Contrastive modality fusion (Eqs. 10-11).** Each modality view against the fused view,
    over all items, with in-view negatives (GRACE's semi-loss):
    :math:`\mathcal{L}_C = \sum_m \frac{1}{N} \sum_i -\log \frac{e^{\theta(h^m_i, h_i)/\tau}}
    {\sum_j e^{\theta(h^m_i, h_j)/\tau} + \sum_{j \ne i} e^{\theta(h^m_i, h^m_j)/\tau}}`,
    :math:`\theta` the cosine similarity, one direction (modality -> fused) and summed over
    modalities as the authors' code. Computed by :func:`chunked_info_nce`: chunks of anchors,
    each chunk's similarities turned at once into the loss and its analytic gradient, the
    symmetric in-view similarities from half their blocks, so memory is
    :math:`O(\text{chunk} \cdot N)` where the authors' code keeps the :math:`N \times N`
    exponent matrices for backward (same value and gradient).

    **Backbone and prediction (Eq. 12).** LightGCN (mean over layers
    :math:`0..L_{ui}`, ``num_ui_layers``) gives :math:`x_u, x_i`;
    :math:`\hat{x}_i = x_i + h_i / \lVert h_i \rVert_2`, score :math:`x_u^\top \hat{x}_i`.

    **Loss (Eq. 13).** ``bpr``; ``reg``: ``reg_weight`` times :func:`squared_l2_penalty` of the
    batch rows of the final embeddings (the code's ``decay``); ``cl``: ``cl_weight`` (the
    code's ``loss_ratio``) times :math:`\mathcal{L}_C`.

    **Per-modality representations** (:attr:`Embeddings.modalities`):
    :math:`h^m / \lVert h^m \rVert_2`, the modality view in the scoring space.

    Any number (:math:`\ge 1`) of modalities is accepted (with one, :math:`\alpha = 1` and
    the contrastive loss pulls :math:`h^1` to itself: its value is constant in the views'
    alignment but still spreads the items apart).

    Args:
        data: graph with train edges and at least one item modality.
        embedding_dim: size ``d`` of the user/item ID embeddings.
        feat_embed_dim: width of the projected features :math:`\tilde{e}^m`.
        num_ui_layers: LightGCN layers :math:`L_{ui}`.
        num_ii_layers: item graph convolution layers :math:`L`, at least 1.
        knn_k: neighbours kept per item, including the item itself.
        frozen_graph_weight: :math:`\lambda \in [0, 1]` of the skip connection.
        cl_weight: weight of the contrastive loss (:math:`\ge 0`).
        temperature: :math:`\tau > 0` of the contrastive loss.
        reg_weight: weight of the squared L2 regulariser (:math:`\ge 0`).
        graph_update: ``"epoch"`` or ``"batch"``.
    """

    loss_parts = ("bpr", "reg", "cl")

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        feat_embed_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        frozen_graph_weight: float = 0.9,
        cl_weight: float = 0.03,
        temperature: float = 0.5,
        reg_weight: float = 1e-5,
        graph_update: str = "epoch",
    ) -> None:
        check_nonnegative("cl_weight", cl_weight)
        check_positive("temperature", temperature)
        super().__init__(
            data,
            embedding_dim=embedding_dim,
            feat_embed_dim=feat_embed_dim,
            num_ui_layers=num_ui_layers,
            num_ii_layers=num_ii_layers,
            knn_k=knn_k,
            frozen_graph_weight=frozen_graph_weight,
            reg_weight=reg_weight,
            graph_update=graph_update,
        )
        self.cl_weight, self.temperature = float(cl_weight), float(temperature)

    def build_modality_fusion(self, embedding_dim: int) -> None:
        """The attention of Eqs. 8-9, in place of LATTICE's graph-mixing logits."""
        self.attention = ModalityAttention(embedding_dim)

    def reset_modality_fusion(self) -> None:
        self.attention.reset_parameters()

    def modality_weights(self) -> Tensor:
        raise NotImplementedError(
            "MICRO weighs the modalities per item by attention (self.attention.weights of the "
            "views), not by LATTICE's one vector"
        )

    def mix_item_graphs(self, graphs: dict[str, Graph]) -> None:
        """MICRO mixes no graphs: each modality propagates over its own (Eq. 7)."""
        return None

    def forward(self) -> MICROEmbeddings:
        _, graphs = self._item_operators()
        views = {m: self._propagate(g) for m, g in graphs.items()}  # Eq. 7
        fused = self.attention(list(views.values()))  # Eqs. 8-9
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        ui = self.ui_propagation(ego, self.adjacency)
        user, item = ui.split([self.num_users, self.num_items])
        item = item + F.normalize(fused, dim=1)  # Eq. 12
        return MICROEmbeddings(
            user,
            item,
            {m: F.normalize(v, dim=1) for m, v in views.items()},
            modality_views=views,
            fused_view=fused,
        )

    def contrastive_loss(self, out: MICROEmbeddings) -> Tensor:
        r""":math:`\mathcal{L}_C` (Eqs. 10-11), summed over modalities."""
        return sum(
            chunked_info_nce(view, out.fused_view, self.temperature, chunk_size=CONTRASTIVE_CHUNK)
            for view in out.modality_views.values()
        )

    def loss(self, batch: BPRBatch, out: MICROEmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        parts = super().loss(batch, out)  # bpr and reg (Eq. 13), as LATTICE
        parts["cl"] = self.cl_weight * self.contrastive_loss(out)
        return parts
