"""VBPR (He & McAuley, AAAI 2016): visual Bayesian personalised ranking from implicit feedback."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender, distinct_rows, pair_rows
from pyg_dhmrec.models.validation import check_int, check_nonnegative
from pyg_dhmrec.nn import bpr_loss, embedding_norm_penalty


class VBPR(Recommender):
    r"""Matrix factorisation whose items also carry a learned linear embedding of their features.

    **Predictor.** The paper's preference predictor (Eq. 4, with :math:`\theta_i = E f_i` of
    Eq. 3) is

    .. math::
        \hat{x}_{ui} = \alpha + \beta_u + \beta_i + \gamma_u^\top \gamma_i
        + \theta_u^\top (E f_i) + \beta'^\top f_i .

    Here, with :math:`M \ge 1` modalities and :math:`f_i = [f_i^1; \dots; f_i^M]`, the map
    :math:`E` is kept in block form :math:`E = [E_1, \dots, E_M]`, so
    :math:`E f_i = \sum_m E_m f_i^m` (the same function as one linear map of the concatenated
    features, which is what MMRec writes; the block order does not matter). Users and items
    live in one :math:`2d` scoring space,

    .. math::
        e_u = [\gamma_u; \theta_u], \qquad e_i = [\gamma_i; \textstyle\sum_m E_m f_i^m],
        \qquad \hat{x}_{ui} = e_u^\top e_i ,

    and :attr:`Embeddings.modalities` holds modality :math:`m` as :math:`[0; E_m f_i^m]`, so
    :math:`e_u^\top [0; E_m f_i^m] = \theta_u^\top E_m f_i^m` and
    :math:`[\gamma_i; 0] + \sum_m [0; E_m f_i^m] = e_i`.

    *Choices* (Eq. 4's terms):

    * :math:`\alpha` and :math:`\beta_u` are the same for every item of a user: they cancel in
      the BPR difference and never change a user's ranking, so they are dropped.
    * :math:`\beta_i` and the visual bias :math:`\beta'^\top f_i` are dropped, as in MMRec's
      VBPR, whose benchmark setting produced the published numbers (DHMRec Table 1).
    * :math:`E` has no bias vector, as in the paper. MMRec's projection has one, :math:`b`;
      it adds :math:`\theta_u^\top b` to every item of a user, which cancels in BPR and in the
      ranking, so it acted only on the value of the norm penalty below.
    * No dropout: MMRec's forward has a dropout argument but always trains with 0.

    *Implementation*: :meth:`loss` without precomputed embeddings projects the features of
    the batch's distinct items only (the loss reads no other row of :math:`E f`), the same
    values as projecting every item and gathering.

    **Loss.** ``bpr``: BPR on :math:`\hat{x}_{ui}` vs :math:`\hat{x}_{uj}` (the paper's
    BPR-OPT). ``reg``: ``reg_weight`` times MMRec's :func:`embedding_norm_penalty` (not squared)
    of the batch rows :math:`e_u, e_i, e_j` of the scoring embeddings, so :math:`E` is
    regularised through :math:`E f_i`, instead of the paper's separate squared penalties
    :math:`\lambda_\Theta, \lambda_E` (MMRec's form is the one the published numbers use).

    **Initialisation** (MMRec): :math:`[\gamma_u; \theta_u]` and :math:`\gamma_i` Xavier
    uniform; every block :math:`E_m` is drawn from the Xavier-normal law of the whole
    :math:`d \times \sum_m F_m` map, :math:`\mathcal{N}(0, 2 / (\sum_m F_m + d))`, so the block
    form starts from the same distribution as one concatenated projection.

    Args:
        data: graph with train edges and at least one item modality (any number).
        embedding_dim: ``d``; users and items score in a ``2d``-wide space.
        reg_weight: weight of the embedding-norm penalty (:math:`\ge 0`).
    """

    loss_parts = ("bpr", "reg")

    uses_modalities = True
    exposes_modalities = True

    def __init__(self, data: HeteroData, embedding_dim: int = 64, reg_weight: float = 1e-3):
        super().__init__(data)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        features = self.register_item_features(data)
        self.feature_dims = {m: int(x.size(1)) for m, x in features.items()}

        d = self.embedding_dim
        self.user_embedding = torch.nn.Embedding(self.num_users, 2 * d)  # [gamma_u; theta_u]
        self.item_embedding = torch.nn.Embedding(self.num_items, d)  # gamma_i
        self.projections = torch.nn.ModuleDict(
            {m: torch.nn.Linear(f, d, bias=False) for m, f in self.feature_dims.items()}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        # Xavier-normal std of the concatenated [d, sum_m F_m] map, shared by all blocks.
        std = math.sqrt(2.0 / (sum(self.feature_dims.values()) + self.embedding_dim))
        for projection in self.projections.values():
            torch.nn.init.normal_(projection.weight, 0.0, std)

    def forward(self) -> Embeddings:
        ids = self.item_embedding.weight
        projected = {m: self.projections[m](self.feature(m)) for m in self.modalities}
        zeros = torch.zeros_like(ids)  # the ID half of a modality's representation
        modalities = {m: torch.cat([zeros, p], dim=-1) for m, p in projected.items()}
        item = torch.cat([ids, sum(projected.values())], dim=-1)
        return Embeddings(self.user_embedding.weight, item, modalities)

    def item_rows(self, index: Tensor) -> Tensor:
        r"""The ``[len(index), 2d]`` rows :math:`e_i = [\gamma_i; \sum_m E_m f_i^m]` of the
        items ``index``."""
        projected = sum(self.projections[m](self.feature(m)[index]) for m in self.modalities)
        return torch.cat([self.item_embedding(index), projected], dim=-1)

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        if out is None:
            items, _, inverse = distinct_rows(torch.cat([batch.pos_item, batch.neg_item]))
            pos, neg = self.item_rows(items)[inverse].split(batch.pos_item.numel())
            user = self.user_embedding(batch.user)
        else:
            user, pos, neg = pair_rows(out.user, out.item, batch)  # read by both parts
        scores = (user * pos).sum(-1), (user * neg).sum(-1)
        reg = embedding_norm_penalty(user, pos, neg)
        return {"bpr": bpr_loss(*scores), "reg": self.reg_weight * reg}
