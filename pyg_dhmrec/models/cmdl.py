"""CMDL (Lin et al., ACM TOIS 2025, doi 10.1145/3715876): contrastive modality-disentangled
learning for multimodal recommendation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, pair_scores
from pyg_dhmrec.models.mgcn import MGCNBackbone
from pyg_dhmrec.models.validation import (
    MAX_WIDTH,
    check_int,
    check_nonnegative,
    check_positive,
)
from pyg_dhmrec.nn import (
    NCECLUB,
    ConcatCritic,
    bpr_loss,
    info_nce,
    squared_l2_penalty,
)


@dataclass
class CMDLEmbeddings(Embeddings):
    """:class:`Embeddings` plus the pass's parts, each ``[U + I, d]`` (users first): the ID
    view, the fused side view, and per modality its view, common part and specific part."""

    id_view: Tensor | None = None
    side_view: Tensor | None = None
    views: list[Tensor] = field(default_factory=list)
    common: Tensor | None = None
    specific: list[Tensor] = field(default_factory=list)


class CMDL(MGCNBackbone):
    r"""CMDL: each modality's graph view is split into a part common to all modalities and a
    modality-specific part; contrastive mutual-information bounds make the specific parts
    independent of the common one and keep the common part informative of every modality.

    **Sources.** The full text of the TOIS paper was not available to us (no stored copy of
    doi 10.1145/3715876; only its title, authors and one-line summaries); the equations below
    are the method as the authors' release (``ruiliu2020/CMDL``, ``src/models/CMDL.py``)
    computes it, numbered (1)-(10) by us in the order of the forward pass and the loss. Where
    the release contradicts its own evident intent, or the project's rules, we say so and what
    we do.

    **(1) Purified modality features** (MGCN's purifier, on which the release builds): per
    modality :math:`m`, :math:`\dot{E}_{i,m} = E_{i,id} \odot \sigma(W^g_m (W_m X_m + b_m) +
    b^g_m)` (:class:`CollaborativeGate`); the raw feature tables are trained too
    (``finetune_features``; the release loads them with ``freeze=False``).

    **(2) ID view.** LightGCN over :math:`\hat{A} = D^{-1/2} A D^{-1/2}`,
    :math:`\bar{E}_{id} = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l E_{id}`.

    **(3) Modality views.** Items: one hop over the modality's top-``knn_k`` cosine kNN graph
    with the similarities kept as weights, symmetrically normalised, built once from the raw
    features (:class:`AddItemKNNGraphs`, the graph MGCN uses; the release's
    ``build_knn_normalized_graph(..., norm_type='sym')``):
    :math:`\bar{E}_{i,m} = \ddot{S}_m^{L_{mm}} \dot{E}_{i,m}`, :math:`L_{mm}` =
    ``num_ii_layers`` (1 in the release). Users aggregate their items,
    :math:`\bar{E}_{u,m} = \sum_{i \in N_u} (|N_u||N_i|)^{-1/2} \bar{E}_{i,m}`. The view
    :math:`Z_m = [\bar{E}_{u,m}; \bar{E}_{i,m}]`.

    **(4) Common and specific parts.** :math:`\alpha_m = \mathrm{softmax}_m(q^\top \tanh(W Z_m
    + b))` per node, :math:`C = \sum_m \alpha_m Z_m`, :math:`S_m = Z_m - C`
    (:meth:`BehaviorAwareFusion.decompose`, the same scorer).

    **(5) Preference gates.** :math:`\tilde{S}_m = \sigma(W^p_m \bar{E}_{id} + b^p_m) \odot
    S_m` and :math:`\tilde{C} = \sigma(W^p_c \bar{E}_{id} + b^p_c) \odot C`.

    **(6) Part weights and side view.** :math:`g = W_2 \tanh(W_1 \bar{E}_{id} + b_1)`
    (``[U + I, M + 1]``, :math:`W_2` without bias), :math:`w = \mathrm{softmax}_k(\max_n
    g_{n,k})` (one global weight per part), :math:`E_{side} = \sum_m w_m \tilde{S}_m + w_c
    \tilde{C}`. *Reference difference*: the release builds :math:`w` with ``torch.tensor([...
    max() ...])``, which cuts the graph, so its :math:`W_1, W_2` never get a gradient; here
    they are trained.

    **(7) Prediction.** :math:`E = \bar{E}_{id} + E_{side}`, score :math:`e_u^\top e_i`.

    **(8) Recommendation loss.** ``bpr`` on :math:`E`, ``reg``: ``reg_weight`` x
    :func:`squared_l2_penalty` of the batch's final user, positive and negative rows (the
    release's ``1/2 sum of squares / batch size``). ``cl``: ``cl_weight`` x
    (:func:`info_nce` of :math:`E_{side}` against :math:`\bar{E}_{id}` over the batch's
    positive items at temperature ``item_temperature`` + the same over its users at
    ``user_temperature``; the release's ``info_pos`` and ``info_neg``).

    **(9) Mutual-information terms** (``mi``, weighted by ``mi_weight``), with the
    :class:`ConcatCritic` estimates of FactorCL: per modality the NCE-CLUB upper bound
    :math:`\hat{I}(S_m; C)` (specific part independent of the common part) and the InfoNCE
    lower bound :math:`\hat{I}(Z_m; C)` (the common part keeps each modality's information),
    and for every ordered pair :math:`m \ne n` the NCE-CLUB upper bound
    :math:`\hat{I}(Z_m; [C; Z_n])`, which by the chain rule bounds the conditional
    :math:`I(Z_m; Z_n \mid C)` the release's names (``club_x_ys_cond``) refer to:

    .. math::
        \mathcal{L}_{mi} = \sum_{B \in \{B^+, B^-\}} \Big[\sum_m \big(\hat{I}_{NCE\text{-}CLUB}
            (S_m; C) + \log |B| - \hat{I}_{NCE}(Z_m; C)\big)
            + \sum_{m \ne n} \hat{I}_{NCE\text{-}CLUB}(Z_m; [C; Z_n])\Big]

    over the rows of the batch's positive items :math:`B^+` and, separately, of its negative
    items :math:`B^-`, summed as in the release. *Choices*: the lower bound enters as the
    InfoNCE loss :math:`\log |B| - \hat{I}_{NCE} \ge 0` (the release's
    :math:`-\hat{I}_{NCE}` plus the constant :math:`\log |B|`: the same gradient). For
    M > 2 the release's two conditional terms become the :math:`M(M-1)` ordered pairs.
    *Reference difference*: the release indexes the ``[U + I, d]`` stacks with item ids
    directly (``self.share[pos_items]``), i.e. it takes the *user* rows numbered like the
    batch's items; we use the item rows the names mean.

    **(10) Critic objective** (``critic``, unweighted): for each NCE-CLUB critic the InfoNCE
    loss :math:`\log |B| - \hat{I}_{NCE}` on *detached* inputs, with its parameters detached in
    the upper bound (:class:`NCECLUB`). The InfoNCE lower-bound critics are trained with the
    encoders by ``mi``, as in the release (they maximise the same bound).

    **One optimiser (why the detached objective matches the release's alternation).** The
    release takes, per batch, an encoder step on the main loss with the NCE-CLUB critics held
    out, then a critic step on the InfoNCE fit after a fresh forward pass. Here the critic's
    parameters get gradient only from ``critic`` and every other parameter only from the
    other parts, so one Adam step on their sum updates each parameter by its own objective
    (Adam is per-coordinate, so a shared optimiser is separate optimisers with one learning
    rate). Differences: the critic fits the embeddings of the same pass, before the encoder
    step (a one-step lag, simultaneous rather than alternating updates), and with the
    trainer's learning rate. *Reference differences* we do not copy: the release recreates its
    AdamW optimisers (default weight decay 0.01) every epoch, so their moments reset, and
    leaves the purifier gates, the common-part attention and the part-weight MLP in no
    optimiser (they stay at their initialisation); here all parameters train under the
    trainer's one Adam state, which the checkpoint saves, so ``--resume`` is exact.

    **Critics.** The release's critics have hidden width 1 (``critic_hidden_dim = 1``);
    ``critic_hidden`` sets it. Such a critic is
    :math:`w_2\,\mathrm{relu}(u^\top x + v^\top y + b)`: where no pair of the batch crosses
    the kink it is constant (the fit loss is :math:`\log |B|`, no gradient) or affine (both
    estimates ignore the pairing, NCE-CLUB is 0), so the bounds constrain the parts only
    through pairs on both sides of one hyperplane. Our critics' output layer has no bias
    (the release's never gets a gradient: both estimates ignore a constant shift), and their
    hidden biases start at zero rather than at PyTorch's default, which starts such critics
    constant or affine on the whole batch (:class:`ConcatCritic`). The release's pairwise
    critics tile ``[B, B, 2d]`` inputs (2.1 GB per call at batch 2048, d = 64);
    :class:`ConcatCritic` computes the same values without the tiling, in chunks, and for
    width 1 from sorted projections in :math:`O(B \log B)`.

    **Modalities.** Any number M >= 1. With one modality there is nothing to disentangle:
    :math:`\alpha = 1`, :math:`C = Z_1` and :math:`S_1 = 0`, so the upper bound
    :math:`\hat{I}(S_1; C)` is identically 0 and is not built, there is no conditional term,
    and ``mi`` is the lower bound :math:`\hat{I}(Z_1; C)` alone; the attention scorer and the
    specific gate then receive no gradient. ``Embeddings.modalities`` holds each
    :math:`\bar{E}_{i,m}` (``[I, d]``).

    Args:
        data: graph with train edges and item features.
        embedding_dim: size ``d`` of the embeddings.
        num_ui_layers: LightGCN layers of the ID view.
        num_ii_layers: propagation hops over each item-item graph.
        knn_k: neighbours per item in the kNN graphs.
        cl_weight: weight of the view contrast ``cl`` (Eq. 8).
        item_temperature, user_temperature: its InfoNCE temperatures.
        mi_weight: weight of the mutual-information terms (Eq. 9).
        critic_hidden: hidden width of every critic.
        reg_weight: weight of the squared L2 term.
        finetune_features: train the raw feature tables too (the release does).
    """

    loss_parts = ("bpr", "reg", "cl", "mi", "critic")

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        cl_weight: float = 0.01,
        item_temperature: float = 0.2,
        user_temperature: float = 0.2,
        mi_weight: float = 0.01,
        critic_hidden: int = 1,
        reg_weight: float = 1e-4,
        finetune_features: bool = True,
    ) -> None:
        super().__init__(data)
        check_int("critic_hidden", critic_hidden, 1, MAX_WIDTH)
        self.item_temperature = check_positive("item_temperature", item_temperature)
        self.user_temperature = check_positive("user_temperature", user_temperature)
        self.cl_weight = check_nonnegative("cl_weight", cl_weight)
        self.mi_weight = check_nonnegative("mi_weight", mi_weight)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        # Eq. (1)'s purifier, Eq. (4)'s attention and Eq. (5)'s specific gates (MGCN's fuser).
        self.build_backbone(
            data, embedding_dim, num_ui_layers, num_ii_layers, knn_k, finetune_features
        )
        d, num_modalities = embedding_dim, len(self.modalities)
        # The common part's gate beside the fuser's.
        self.common_preference = torch.nn.Linear(d, d)
        self.part_scorer = torch.nn.Sequential(
            torch.nn.Linear(d, d),
            torch.nn.Tanh(),
            torch.nn.Linear(d, num_modalities + 1, bias=False),
        )

        # Eq. (9)'s critics: lower bounds I(Z_m; C), upper bounds I(S_m; C), I(Z_m; [C; Z_n]).
        self.pairs = [(m, n) for m in self.modalities for n in self.modalities if m != n]
        self.lower_critics = torch.nn.ModuleDict(
            {m: ConcatCritic(d, d, critic_hidden) for m in self.modalities}
        )
        self.specific_critics = torch.nn.ModuleDict(
            {m: NCECLUB(d, d, critic_hidden) for m in self.modalities} if num_modalities > 1 else {}
        )
        self.conditional_critics = torch.nn.ModuleDict(
            {self._pair_key(m, n): NCECLUB(2 * d, d, critic_hidden) for m, n in self.pairs}
        )
        self.reset_parameters()

    @staticmethod
    def _pair_key(m: str, n: str) -> str:
        return f"{m}__{n}"

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.common_preference.reset_parameters()
        for layer in self.part_scorer:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
        for critics in (self.lower_critics, self.specific_critics, self.conditional_critics):
            for critic in critics.values():
                critic.reset_parameters()

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[: self.num_users], x[self.num_users :]

    def forward(self) -> CMDLEmbeddings:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        id_view = self.ui_propagation(ego, self.adjacency)
        item_views, views = {}, []
        for m in self.modalities:
            item_views[m] = self.ii_propagation(self.purify(m), self.item_item[m])
            views.append(torch.cat([self.user_item(item_views[m]), item_views[m]]))
        parts = self.fusion.decompose(views, id_view)
        gated = [p * s for p, s in zip(parts.preferences, parts.specific)]
        gated.append(torch.sigmoid(self.common_preference(id_view)) * parts.shared)
        weights = torch.softmax(self.part_scorer(id_view).amax(dim=0), dim=0)  # [M + 1]
        side_view = sum(w * g for w, g in zip(weights, gated))
        user, item = self._split(id_view + side_view)
        return CMDLEmbeddings(
            user,
            item,
            item_views,
            id_view=id_view,
            side_view=side_view,
            views=views,
            common=parts.shared,
            specific=parts.specific,
        )

    def mutual_information(self, out: CMDLEmbeddings, items: Tensor) -> tuple[Tensor, Tensor]:
        """Eqs. (9)-(10) on the rows of ``items``: ``(mi, critic)``, both unweighted."""
        u = self.num_users
        common = out.common[u:][items]
        views = {m: z[u:][items] for m, z in zip(self.modalities, out.views)}
        specific = {m: s[u:][items] for m, s in zip(self.modalities, out.specific)}
        mi = critic = common.new_zeros(())
        for m in self.modalities:
            mi = mi + self.lower_critics[m].info_nce_loss(views[m], common)
            if m in self.specific_critics:
                bound, fit = self.specific_critics[m](specific[m], common)
                mi, critic = mi + bound, critic + fit
        for m, n in self.pairs:
            condition = torch.cat([common, views[n]], dim=-1)
            bound, fit = self.conditional_critics[self._pair_key(m, n)](condition, views[m])
            mi, critic = mi + bound, critic + fit
        return mi, critic

    def loss(self, batch: BPRBatch, out: CMDLEmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        reg = squared_l2_penalty(
            out.user[batch.user], out.item[batch.pos_item], out.item[batch.neg_item]
        )
        side_user, side_item = self._split(out.side_view)
        id_user, id_item = self._split(out.id_view)
        items, users = batch.pos_item, batch.user
        cl = info_nce(side_item[items], id_item[items], self.item_temperature) + info_nce(
            side_user[users], id_user[users], self.user_temperature
        )
        mi_pos, critic_pos = self.mutual_information(out, batch.pos_item)
        mi_neg, critic_neg = self.mutual_information(out, batch.neg_item)
        return {
            "bpr": bpr_loss(pos, neg),
            "reg": self.reg_weight * reg,
            "cl": self.cl_weight * cl,
            "mi": self.mi_weight * (mi_pos + mi_neg),
            "critic": critic_pos + critic_neg,
        }
