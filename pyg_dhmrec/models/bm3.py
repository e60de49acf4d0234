"""BM3 (Zhou et al., WWW 2023): bootstrap latent representations for multi-modal recommendation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import OnDemandEmbeddings, OnDemandRows, Recommender
from pyg_dhmrec.models.validation import (
    check_fraction,
    check_int,
    check_nonnegative,
)
from pyg_dhmrec.nn import (
    FrozenSparse,
    LightPropagation,
    cosine_alignment_loss,
    dropout_view,
    embedding_norm_penalty,
)


class BM3Online(NamedTuple):
    """BM3's online representations before the predictor (the targets are views of these)."""

    user: Tensor  # h_u [U, d]
    item: Tensor  # h_i [I, d]
    features: dict[str, OnDemandRows]  # h_m = e_m W_m + b_m, [I, d] per modality, on demand


@dataclass
class BM3Embeddings(OnDemandEmbeddings):
    """:class:`Embeddings` in the scoring (predictor) space, carrying the pre-predictor
    :class:`BM3Online` tensors of the same forward pass as ``online`` (the loss's targets).

    The predictor :math:`f_p` is a map of each row, and a training step reads only its batch's
    rows (issue 17: the loss predicts those rows itself); ``user``, ``item`` and
    ``modalities`` predict every row on first access, in the same autograd graph."""

    online: BM3Online | None = None
    predictor: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)

    def compute_user(self) -> Tensor:
        r""":math:`\tilde{h}_u = f_p(h_u)` of every user."""
        return self.predictor(self.online.user)

    def compute_item(self) -> Tensor:
        r""":math:`\tilde{h}_i = f_p(h_i)` of every item."""
        return self.predictor(self.online.item)

    def compute_modalities(self) -> dict[str, Tensor]:
        r""":math:`\tilde{h}_m = f_p(h_m)` of every item per modality."""
        return {m: self.predictor(h.table()) for m, h in self.online.features.items()}


class BM3(Recommender):
    r"""BM3: LightGCN ID embeddings and projected modality features, trained without negatives by
    predicting dropout (stop-gradient) views of each other.

    **Latent space convertor (Eq. 1).** Per modality :math:`m`,
    :math:`h_m = e_m W_m + b_m` maps the raw item features :math:`e_m` to ``d``.
    *Choice*: with ``finetune_features=True`` (the authors' code, which produced the published
    numbers, loads :math:`e_m` as a trainable embedding table) the raw features are parameters
    updated by the optimiser; with ``False`` they are frozen buffers.

    **Encoder (Eqs. 2-3).** LightGCN on the symmetric-normalised train graph,
    :math:`H^{(l+1)} = D^{-1/2} A D^{-1/2} H^{(l)}`, readout = mean over layers :math:`0..L`.
    *Choice* (authors' code): the item output adds the layer-0 ID embedding once more,
    :math:`h_i = \frac{1}{L+1}\sum_l h_i^{(l)} + h_i^{(0)}`; :math:`h_u` has no such term.

    **Contrastive view generator (Eqs. 4-5).** One shared linear predictor
    :math:`f_p(h) = h W_p + b_p` gives the online views :math:`\tilde{h}_u, \tilde{h}_i,
    \tilde{h}_m`; the target views are :math:`\dot{h} = \mathrm{Dropout}_p(\mathrm{sg}(h))`
    (:func:`dropout_view`: no target network, no gradient through the target) of
    :math:`h_u, h_i, h_m`. *Choice*: dropout is drawn on the batch rows (the code drops the full
    matrices and then indexes them; per row the distribution is the same).

    **Loss (Eqs. 6-10).** With :math:`C(a, b) = 1 - \cos(a, \mathrm{sg}(b))` averaged over the
    batch (:func:`cosine_alignment_loss`; the paper's negative cosine plus 1, same gradients)
    and the batch's (user, positive item) pairs only (``neg_item`` is ignored: BM3 needs no
    negative samples):

    * ``rec`` (graph reconstruction, Eq. 6): :math:`C(\tilde{h}_u, \dot{h}_i) +
      C(\tilde{h}_i, \dot{h}_u)`;
    * ``align`` (inter-modality feature alignment, Eq. 8): ``cl_weight``
      :math:`\cdot \sum_m C(\tilde{h}_m^i, \dot{h}_i)`, the predicted modality feature of the
      positive item towards the target view of its ID (graph) embedding;
    * ``mask`` (intra-modality masked feature alignment, Eq. 9): ``cl_weight``
      :math:`\cdot \sum_m C(\tilde{h}_m^i, \dot{h}_m^i)`;
    * ``reg``: ``reg_weight`` times MMRec's ``EmbLoss`` (:func:`embedding_norm_penalty`) of the
      full online matrices :math:`H_U, H_I`, :math:`(\lVert H_U \rVert_F + \lVert H_I \rVert_F)
      / |I|`. *Choice*: the code's form, not squared; the published ``reg_weight`` values
      (0.1, 0.01) are tuned for it. ``cl_weight`` (2.0 in the code) is the paper's single
      weight of the two modality terms.

    **Computation** (issue 17, exact): the loss reads only the batch's rows, so it applies
    the predictor and the convertor (Eq. 1) to those rows (both map each row on its own; the
    dropout masks are drawn on the same rows in the same order as before); the full predicted
    tables of :class:`BM3Embeddings` are computed on first access.

    **Prediction (Eq. 11).** :math:`s(u, i) = \tilde{h}_u^\top \tilde{h}_i`, the predictor
    outputs (the code scores with the predicted online embeddings too); the full graph is used.

    **Embeddings.** ``user``/``item`` are :math:`\tilde{h}_u, \tilde{h}_i` and
    ``modalities[m]`` is :math:`\tilde{h}_m = f_p(h_m)`, the projected feature in the scoring
    space (the online view :math:`\mathcal{L}_{align}` aligns with the item); BM3 has no fusion
    of modalities into the item embedding (features shape it only through the loss).

    Any number (at least one) of modalities is accepted. Initialisation as in the code: Xavier
    uniform ID embeddings, Xavier normal projection and predictor weights, PyTorch's default
    biases.

    Args:
        data: graph with train edges and item features.
        embedding_dim: size ``d`` of embeddings and projected features.
        num_ui_layers: LightGCN layers :math:`L`.
        dropout: probability :math:`p` of zeroing an entry of a target view.
        reg_weight: weight of the embedding-norm regulariser.
        cl_weight: weight of the inter- and intra-modality alignment terms.
        finetune_features: train the raw item features :math:`e_m` as parameters.
    """

    loss_parts = ("rec", "align", "mask", "reg")

    uses_modalities = True
    exposes_modalities = True

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 1,
        dropout: float = 0.5,
        reg_weight: float = 0.1,
        cl_weight: float = 2.0,
        finetune_features: bool = True,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        check_fraction("dropout", dropout, include_1=False)
        check_nonnegative("reg_weight", reg_weight)
        check_nonnegative("cl_weight", cl_weight)
        features = self.register_item_features(data, prefix="raw_", finetune=finetune_features)
        self.dropout, self.reg_weight, self.cl_weight = dropout, reg_weight, cl_weight

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.projections = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), embedding_dim) for m, x in features.items()}
        )
        self.predictor = torch.nn.Linear(embedding_dim, embedding_dim)
        self.ui_propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="mean"
        )
        adj = normalized_adjacency(self.train_edge_index(data), self.num_users, self.num_items)
        self.adjacency = FrozenSparse(adj, symmetric=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for layer in (self.predictor, *self.projections.values()):
            layer.reset_parameters()  # default bias initialisation
            torch.nn.init.xavier_normal_(layer.weight)
        self.reset_item_features()

    def online(self) -> BM3Online:
        """The pre-predictor representations :math:`h_u, h_i, h_m` (Eqs. 1-3); :math:`h_m`
        as :class:`OnDemandRows` (a map of each item's own features)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.ui_propagation(ego, self.adjacency)
        user, item = out.split([self.num_users, self.num_items])
        item = item + self.item_embedding.weight  # code's residual ID term
        features = {m: OnDemandRows(self._projector(m)) for m in self.modalities}
        return BM3Online(user, item, features)

    def _projector(self, modality: str) -> Callable[[Tensor | None], Tensor]:
        """Eq. (1) of the items ``index`` (``None``: every item)."""

        def rows(index: Tensor | None) -> Tensor:
            feature = self.input_feature(modality)
            return self.projections[modality](feature if index is None else feature[index])

        return rows

    def forward(self) -> BM3Embeddings:
        return BM3Embeddings(None, None, None, self.online(), self.predictor)

    def loss(self, batch: BPRBatch, out: BM3Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        online = out.online
        users, items = batch.user, batch.pos_item  # no negatives: batch.neg_item is unused
        # the batch's rows only, predicted here (the predictor maps each row on its own)
        user_rows, item_rows = online.user[users], online.item[items]
        user_target = dropout_view(user_rows, self.dropout)
        item_target = dropout_view(item_rows, self.dropout)
        rec = cosine_alignment_loss(self.predictor(user_rows), item_target)
        rec = rec + cosine_alignment_loss(self.predictor(item_rows), user_target)
        align = mask = rec.new_zeros(())
        for m in self.modalities:
            feature_rows = online.features[m].rows(items)
            predicted = self.predictor(feature_rows)
            align = align + cosine_alignment_loss(predicted, item_target)
            mask = mask + cosine_alignment_loss(predicted, dropout_view(feature_rows, self.dropout))
        reg = embedding_norm_penalty(online.user, online.item)
        return {
            "rec": rec,
            "align": self.cl_weight * align,
            "mask": self.cl_weight * mask,
            "reg": self.reg_weight * reg,
        }
