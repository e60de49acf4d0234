"""DHMRec (Zhan et al., AAAI 2026): collaboration-guided multimodal disentanglement and
hierarchical fusion for recommendation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import (
    DegreeSensitiveEdgeDropout,
    mix_modality_graphs,
    to_csr,
    user_item_matrix,
)
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import AddItemKNNGraphs, DerivedGraph, knn_edge_type
from pyg_dhmrec.models.base import (
    OnDemandEmbeddings,
    OnDemandRows,
    Recommender,
    distinct_rows,
)
from pyg_dhmrec.models.validation import (
    check_bool,
    check_fraction,
    check_int,
    check_nonnegative,
)
from pyg_dhmrec.nn import (
    AttentionFusion,
    CollaborativeGate,
    DisentangledEncoder,
    FrozenSparse,
    LightPropagation,
    bpr_loss,
    centred_projection,
    item_seeded_propagation,
    jensen_shannon_divergence,
    logit_pooling,
    orthogonality_loss,
    score_distribution_kl,
    squared_l2_penalty,
)

ABLATIONS = ("no_dis", "no_af", "no_pnf", "no_kl", "no_ii")


@dataclass
class DHMRecEmbeddings(OnDemandEmbeddings):
    """:class:`Embeddings` plus the parts of the same pass that the loss reads: the propagated
    ID view ``id`` (``[U + I, d]``), the fused multimodal view :math:`\tilde{E}_{mm}` as its
    item rows ``mm_item`` and its user rows ``mm_users``, and the common codes ``commons``
    (:math:`C_m`) and specific parts ``specifics`` (:math:`S_m`) per modality (empty with
    ``no_dis``).

    The multimodal user rows are :class:`OnDemandRows`: Eqs. 18-19 cost a ``d x d`` map and two
    layer norms per view and row, and a training step needs only its batch's users
    (``mm_users.rows(users)``). Reading ``user`` or ``mm`` computes every user once, in the same
    autograd graph, so the :class:`Embeddings` contract holds unchanged.
    """

    id: Tensor | None = None
    mm_item: Tensor | None = None
    mm_users: OnDemandRows | None = field(default=None, repr=False)
    commons: dict[str, Tensor] = field(default_factory=dict)
    specifics: dict[str, Tensor] = field(default_factory=dict)
    alpha_mm: float = 1.0
    #: ``(batch.user, its final rows)`` of the last :meth:`DHMRec.loss` on this pass
    batch_users: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def compute_user(self) -> Tensor:
        """Final user embeddings ``[U, d]`` (Eq. 22)."""
        num_users = self.id.size(0) - self.mm_item.size(0)
        return self.id[:num_users] + self.alpha_mm * self.mm_users.table()

    def user_rows(self, index: Tensor) -> Tensor:
        """The final rows of ``index``: those :meth:`DHMRec.loss` computed for the same batch
        tensor, else read from (or computed for) the full table."""
        done = self.batch_users
        if self._user is None and done is not None and done[0] is index:
            return done[1]
        return self.user[index]

    @property
    def mm(self) -> Tensor:
        r""":math:`\tilde{E}_{mm}` of every node, ``[U + I, d]``."""
        return torch.cat([self.mm_users.table(), self.mm_item])


class DHMRec(Recommender):
    r"""DHMRec, following Eqs. 1-25 of the paper; choices where it is silent are marked *choice*.

    **Disentanglement (Eqs. 1-6).** Per modality :math:`m`, :class:`DisentangledEncoder` gives
    :math:`C_m, P_m`; :class:`CollaborativeGate` gives :math:`S_m = P_m \odot \sigma(W_2 E_{i,id}
    + b_2)` from the layer-0 item ID embedding; :func:`logit_pooling` fuses
    :math:`C = \sigma^{-1}(\frac{1}{M}\sum_m \sigma(C_m))`. Losses:
    :func:`jensen_shannon_divergence` of the :math:`\sigma(C_m)` and :func:`orthogonality_loss`
    of each :math:`(C_m, S_m)`, both on the batch's distinct positive and negative items
    (*choice*: the appendix costs them :math:`O(B d_k)`). With M modalities the JSD is the
    uniform-mixture generalisation, equal to Eq. 4 for M = 2.

    **User-item views (Eqs. 7-8).** Views id, common and one per modality share the train graph.
    The id view propagates the ID embeddings on FREEDOM's degree-sensitively pruned graph
    (resampled every epoch, full graph at evaluation); the others use the full graph. Items start
    from :math:`C` and :math:`S_m`; users start from their interacted items,
    :math:`\tilde{R} E_I` with :math:`\tilde{R}_{ui} = 1/\sqrt{|N_u||N_i|}` (*choice*: the paper
    says "aggregating from interacted items"; we reuse Eq. 14's normalisation). Output: mean over
    the :math:`L+1` layers.

    **Item-item views (Eqs. 9-14).** Frozen top-k cosine kNN graphs on the raw features, binary,
    normalised :math:`D^{-1/2} \hat{I} D^{-1/2}` with row degrees (FREEDOM's normalisation),
    read from ``data``'s ``('item', 'knn_<m>', 'item')`` edge types (:class:`AddItemKNNGraphs`); the
    common graph is :math:`\sum_m \beta_m \tilde{I}^m`. Each view's items propagate
    ``num_ii_layers`` hops from the user-item view's output and keep the last layer; users are
    :math:`\tilde{R} \hat{E}_I` (Eq. 14).

    **Fusion (Eqs. 15-22).** :class:`AttentionFusion` (positive-negative attention across the
    :math:`d_k` dimensions, scaled by :math:`\sqrt{N}`, residual + two layer norms, sum over
    views) gives :math:`\tilde{E}_{mm}`; :func:`score_distribution_kl` aligns
    :math:`KL(P_{mm} \| P_{id})` over all items for the batch's distinct users, with
    :math:`P_{id}` from the propagated ID view; the prediction is
    :math:`(E_{id} + \alpha_{mm}\tilde{E}_{mm})_u^\top (E_{id} + \alpha_{mm}\tilde{E}_{mm})_i`.

    **Scale of the two parts of Eq. 22 (issue 16).** :math:`\alpha_{mm}` is "a hyperparameter
    that controls the fusion strength" and the paper's optimum lies at 0.8-1.2 with the
    ID-only point :math:`\alpha_{mm} = 0` worst, so :math:`E_{id}` and :math:`\tilde{E}_{mm}`
    must start on one scale. What fixes the scale of :math:`\tilde{E}_{mm}` is the outer layer
    norm of Eq. 18 (Eq. 19 sums its output over the views): with PyTorch's unit gain each view
    has row norm :math:`\sqrt{d_k}` whatever the features, while Xavier-initialised ID tables
    propagated by Eqs. 7-8 have per-entry RMS about :math:`\sqrt{2/(|U|+d_k)}`. Measured at
    initialisation with unit gain (``benchmarks/embedding_balance.py``): on TikTok the
    multimodal part had row norm 19.9 against 0.050 for the ID part, the first BPR loss was
    12.1 (86.5 with N(0, 1) features, 41.8 on the 30-item toy graph at :math:`d_k = 64`) and
    the BPR gradient reaching the encoders was 535 against 0.67 for the item ID table, so
    :math:`\alpha_{mm}` acted as an inverse temperature. *Choice*: the paper gives no initial
    value for the layer norm's affine parameters; every view's outer layer norm is multiplied
    by a constant :math:`s` = the ID part's per-entry RMS divided by :math:`\sqrt{V}`
    (:meth:`_id_scale`; the sum of :math:`V` views with independent rows then has the ID
    part's scale), and the layer norm keeps PyTorch's initial gain 1 and bias 0
    (:class:`~pyg_dhmrec.nn.DimensionAttention`'s ``output_scale``, a buffer saved with the
    model). :math:`s\,LN` with affine :math:`(\gamma, \beta)` is Eq. 18's layer norm with
    affine :math:`(s\gamma, s\beta)`; the constant keeps Adam's steps on them relative to a
    unit gain. We first started the gain itself at :math:`s` (bias 0): Adam moves every
    parameter by about the learning rate per step, so the bias, one vector shared by all
    nodes with a gradient of steady sign, grew by about :math:`10^{-3}` per entry and step
    while the gain stayed near :math:`s \approx 0.004`; on TikTok (alpha_mm 0.5, gamma_kl
    1.0, ``benchmarks/embedding_balance.py``) the multimodal part's row norm went from 0.023
    to 3.9 in 12 epochs with its score distribution exactly uniform (entropy
    :math:`\log |I|`: the same vector for every node, an item bias through the ID part, no
    content), and valid R@20 stayed at 0.061-0.069. With the constant, the same run's
    multimodal part stays at 0.04-0.07 (the ID part grows from 0.06 to 0.5) and valid R@20
    rises steadily (0.067 at epoch 1, 0.080 at epoch 14); :math:`\alpha_{mm}` (selected on
    valid) sets the balance during training.
    Normalisation placement (Eq. 18: LN inside and after the residual), what
    :math:`\alpha_{mm}` multiplies (:math:`\tilde{E}_{mm}` only, Eq. 22) and the inner layer
    norm (unit gain: it only sets the ratio of attention output to the residual view) are as
    the paper writes them. After the change the first BPR loss is 0.69 on TikTok, the
    N(0, 1) folder and the synthetic default, the parts are within 2x, and the BPR gradient
    reaches the ID tables and the multimodal branch with comparable norms.

    **Feature centring (before Eq. 1).** *Choice* (``center_features``, default on): each
    modality's features have their mean over the items subtracted before :math:`W_1^m` (as
    :math:`W_1^m X_m - \mathbf{1}(W_1^m \mu_m)^\top`, no centred copy of the features); the
    paper feeds "raw features" and says nothing of their statistics, and the kNN graphs of
    Eqs. 9-10 still use the raw ones. Measured on TikTok at initialisation (the share of the
    item rows that is one vector common to all items, ``item shared`` of
    ``benchmarks/embedding_balance.py``): the raw image features 0.924 (every entry positive,
    mean 2.69, std 1.17), audio 0.467; propagation on the user-item and item-item graphs (a
    low-pass filter) raised the image view to 0.988, and the fused :math:`\tilde{E}_{mm}`
    was 0.906 shared at initialisation and 0.99-1.00 after one epoch, whether the layer norm
    of Eq. 18 had unit gain or the scale below: the layer norms keep a direction every item
    shares, so the multimodal part acted as one vector added to every node (an item bias
    through the ID part) and larger :math:`\alpha_{mm}` only made the ranking worse (valid
    R@20 0.090 at 0.5, 0.075 at 2.0, 0.069 at 4.0 after 18 epochs). With centred features
    the fused part starts 0.145 shared and stays at 0.6-0.75, and valid R@20 reaches 0.086 at
    epoch 11 against 0.078 (alpha_mm 0.5, gamma_kl 1.0). Centring is a fixed shift of the
    input, the same as a bias :math:`-W_1^m \mu_m` in Eq. 1 that is never trained.

    **KL alignment (Eqs. 20-21).** Eq. 20 has no temperature: the softmax runs over raw inner
    products, so the sharpness of both distributions follows the learned embedding scale. With
    the unit-gain layer norm :math:`P_{mm}` started sharp (entropy 1.7 on TikTok) against a
    uniform :math:`P_{id}` (entropy 8.81 = log 6710), so the term mostly flattened the
    multimodal branch; with both parts on one scale both start flat and sharpen together.
    *Choice*: both sides carry gradient, as Eq. 21 writes a divergence between two learned
    distributions (no stop-gradient is mentioned), and no temperature is added. The other
    reading ("align multimodal features with ID embeddings", :math:`P_{id}` a fixed target) is
    the option ``kl_detach_id`` (two of the KL's six products fewer); measured on TikTok
    (seed 2024, alpha_mm 0.25, gamma_kl 1.0, ``benchmarks/RESULTS.md``): valid R@20 0.0860 at
    epoch 63 with the KL rising from 0.49 to 0.74 (the ID distribution sharpens on its own and
    the multimodal one cannot follow it), against 0.0952 with both sides learned.

    **Sampled KL (option, off by default; not in the paper).** The appendix puts the KL's cost at
    :math:`O(B|I|d_k)`, the largest of a step (six ``[B, |I|]`` products with the gradient).
    ``kl_items = n`` draws ``n`` distinct items uniformly each step (the same for every batch
    user and both distributions) and takes Eq. 20's softmax over them only, so Eq. 21 compares
    the two distributions restricted to the sample and renormalised on it: cost
    :math:`O(Bnd_k)`. This is an approximation (the restricted KL is not an unbiased estimate of
    the full one); ``None`` or ``n >= |I|``: every item, Eqs. 20-21 exactly. Its accuracy and
    speed are in ``benchmarks/RESULTS.md``.

    **Loss (Eq. 25).** :math:`\mathcal{L}_{BPR}` (mean over the batch, as MMRec does, rather than
    Eq. 24's sum) :math:`+ \gamma_{dis}(\mathcal{L}_{JSD} + \sum_m \mathcal{L}_{orth_m}) +
    \gamma_{kl}\mathcal{L}_{KL} + \gamma_{reg}\lVert\theta\rVert^2`, where
    :math:`\lVert\theta\rVert^2` is the squared L2 norm of the batch's layer-0 ID embeddings
    over :math:`2B` (*choice*, the usual MMRec form). Logged parts: ``bpr``, ``jsd``, ``orth``,
    ``kl``, ``reg`` (each already weighted).

    **Computation** (issue 17; each an exact rewrite, tested against the direct form). The
    views' users start as their items' aggregate, so every second LightGCN layer repeats the
    previous one: :func:`item_seeded_propagation` computes Eqs. 7-8 with two half products
    instead of five (items only; Eq. 14 recomputes the users after the item-item hop). The
    attention maps of Eqs. 15-16 need only :math:`E_{fus}^\top [\hat{E}_1, \dots,
    \hat{E}_V]` over all nodes (one ``[d, V d]`` product, :meth:`AttentionFusion.
    attention_maps`); with the item-item views the users are :math:`\tilde{R}\hat{E}_I`
    (Eq. 14), so their part is :math:`E_{fus,I}^\top \tilde{R}^\top \hat{E}_U` and
    :math:`W_3` runs on the items only (:meth:`_attention_maps`). Value, map and output
    weights fold into one ``d x d`` matrix per view (:meth:`DimensionAttention.output_map`).
    Eq. 18 is per node, so a training step applies it
    to every item and only its batch's distinct users (:class:`DHMRecEmbeddings`); reading the
    full user table computes the rest. :func:`score_distribution_kl` runs block by block with
    its closed-form gradient.

    **Ablations** (Table 2), any combination of: ``no_dis`` (no encoders, gates, JSD, orth: each
    modality view starts from :math:`W_1^m X_m` and there is no common view), ``no_af`` (mean of
    the views instead of attention), ``no_pnf`` (standard attention, no negative branch and no
    :math:`\alpha`'s), ``no_kl`` (no KL term), ``no_ii`` (no item-item graphs; the views'
    user-item outputs are fused directly).

    **Modality representations** (:attr:`Embeddings.modalities`, for plug-in objectives): for
    modality :math:`m`, the item rows of its view :math:`\hat{E}_m` (the specific part
    :math:`S_m`, or :math:`W_1^m X_m` with ``no_dis``, after user-item and item-item
    propagation), i.e. the modality-only input of the fusion. *Choice*: it is ``d``-wide like
    the prediction, so :math:`e_u^\top \hat{e}_{m,i}` is a score; the attended view
    :math:`\mathrm{Attn}_m` would already mix the other views through :math:`E_{fus}`.

    Args:
        data: graph with train edges and item features (at least two modalities).
        embedding_dim: :math:`d_k`.
        num_ui_layers: user-item propagation layers :math:`L`.
        num_ii_layers: item-item propagation layers.
        knn_k: neighbours per item in the kNN graphs.
        modality_weights: :math:`\beta_m` per modality for the common item-item graph
            (default: equal weights).
        edge_dropout: fraction of train edges pruned each epoch in the id view.
        alpha_mm: :math:`\alpha_{mm}`.
        gamma_dis, gamma_kl, gamma_reg: loss weights.
        ablations: names from ``ABLATIONS``.
        center_features: subtract each feature dimension's mean over the items before Eq. 1
            (see "Feature centring" above; ``False``: the raw features).
        kl_detach_id: no gradient from the KL (Eq. 21) into the ID side (see "KL alignment").
        kl_items: items drawn per step for the KL (see "Sampled KL"); ``None``: every item.
    """

    loss_parts = ("bpr", "jsd", "orth", "kl", "reg")

    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        if "no_ii" in settings.get("ablations", ()):
            return []
        return [AddItemKNNGraphs(k=settings["knn_k"])]

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        modality_weights: Mapping[str, float] | None = None,
        edge_dropout: float = 0.8,
        alpha_mm: float = 1.0,
        gamma_dis: float = 0.1,
        gamma_kl: float = 1.0,
        gamma_reg: float = 1e-5,
        ablations: Sequence[str] = (),
        center_features: bool = True,
        kl_detach_id: bool = False,
        kl_items: int | None = None,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        for name, value in (
            ("alpha_mm", alpha_mm),
            ("gamma_dis", gamma_dis),
            ("gamma_kl", gamma_kl),
            ("gamma_reg", gamma_reg),
        ):
            check_nonnegative(name, value)
        check_fraction("edge_dropout", edge_dropout, include_1=False)
        check_bool("center_features", center_features)
        check_bool("kl_detach_id", kl_detach_id)
        if kl_items is not None and (
            isinstance(kl_items, bool) or not isinstance(kl_items, int) or kl_items < 1
        ):
            raise ValueError(
                f"kl_items must be a positive integer or null (every item), got {kl_items!r}"
            )
        if isinstance(ablations, str) or not isinstance(ablations, Sequence):
            raise ValueError(
                f"ablations must be a list of names from {ABLATIONS}, got {ablations!r}"
            )
        unknown = [a for a in ablations if a not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown DHMRec ablation(s) {unknown}; choose from {ABLATIONS}")
        repeated = sorted({a for a in ablations if list(ablations).count(a) > 1})
        if repeated:
            raise ValueError(
                f"ablations must name each ablation once, got {list(ablations)!r} "
                f"({', '.join(repeated)} repeated)"
            )
        data = self.with_graphs(data, knn_k=knn_k, ablations=ablations)
        self.ablations = tuple(ablations)
        self.disentangle = "no_dis" not in ablations
        self.attention = "no_af" not in ablations
        self.kl_alignment = "no_kl" not in ablations
        self.item_graphs = "no_ii" not in ablations
        self.alpha_mm, self.gamma_dis = alpha_mm, gamma_dis
        self.gamma_kl, self.gamma_reg = gamma_kl, gamma_reg
        self.kl_detach_id = kl_detach_id
        self.kl_items = kl_items

        features = self.register_item_features(data, min_modalities=2, center=center_features)

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        if self.disentangle:
            self.encoders = torch.nn.ModuleDict(
                {m: DisentangledEncoder(x.size(1), embedding_dim) for m, x in features.items()}
            )
            self.gates = torch.nn.ModuleDict(
                {m: CollaborativeGate(embedding_dim) for m in self.modalities}
            )
            self.views = ["common", *self.modalities]
        else:
            self.projections = torch.nn.ModuleDict(
                {
                    m: torch.nn.Linear(x.size(1), embedding_dim, bias=False)
                    for m, x in features.items()
                }
            )
            self.views = list(self.modalities)

        train = self.train_edge_index(data)
        self.pruning = DegreeSensitiveEdgeDropout(
            train, self.num_users, self.num_items, edge_dropout
        )
        self.user_item = FrozenSparse(user_item_matrix(train, self.num_users, self.num_items))
        self.ui_propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="mean", symmetric=True
        )
        self.ii_propagation = LightPropagation(
            check_int("num_ii_layers", num_ii_layers, 0), mode="last"
        )
        if self.item_graphs:
            self.item_item = torch.nn.ModuleDict(
                {
                    view: FrozenSparse(adj)
                    for view, adj in self._item_graphs(data, modality_weights).items()
                }
            )
        if self.attention:
            self.fusion = AttentionFusion(
                embedding_dim, len(self.views), negative="no_pnf" not in ablations
            )
        self.reset_parameters()

    def _item_graphs(
        self, data: HeteroData, weights: Mapping[str, float] | None
    ) -> dict[str, Tensor]:
        n = self.num_items
        graphs = {}
        for m in self.modalities:
            store = data[knn_edge_type(m)]
            graphs[m] = to_csr(store.edge_index, store.edge_weight, n, n)
        if self.disentangle:
            # No weights given: equal beta_m (the YAML holds FREEDOM's 0.1 image / 0.9 text).
            # {} is refused as FREEDOM refuses it (one weight per modality), not read as equal
            if weights is None:
                weights = {m: 1.0 / len(self.modalities) for m in self.modalities}
            graphs["common"] = mix_modality_graphs(graphs, weights, "modality_weights")
        return graphs

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        if self.disentangle:
            for module in [*self.encoders.values(), *self.gates.values()]:
                module.reset_parameters()
        else:
            for projection in self.projections.values():
                torch.nn.init.xavier_uniform_(projection.weight)
        if self.attention:
            self.fusion.reset_parameters()
            self.fusion.set_output_scale(self._id_scale() / len(self.views) ** 0.5)

    @torch.no_grad()
    def _id_scale(self) -> float:
        """Per-entry RMS of the propagated ID embeddings on the full graph (Eqs. 7-8)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        id_emb = self.ui_propagation(ego, self.pruning.full_adjacency)
        return id_emb.pow(2).mean().sqrt().item()

    def on_train_epoch_start(self) -> None:
        self.pruning.resample()

    def _disentangle(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Item inputs of every view, plus the common codes C_m and specifics S_m."""
        commons, specifics = {}, {}
        if not self.disentangle:
            inputs = {
                m: centred_projection(self.projections[m], self.feature(m), self.feature_mean(m))
                for m in self.modalities
            }
            return inputs, commons, specifics
        for m in self.modalities:
            commons[m], private = self.encoders[m](self.feature(m), self.feature_mean(m))
            specifics[m] = self.gates[m](private, self.item_embedding.weight)
        inputs = {"common": logit_pooling([commons[m] for m in self.modalities]), **specifics}
        return inputs, commons, specifics

    def forward(self) -> DHMRecEmbeddings:
        r"""Final embeddings :math:`E_{id} + \alpha_{mm}\tilde{E}_{mm}` (Eq. 22); modality
        ``m``'s representation is its view's item embedding :math:`\hat{E}_m` (propagated,
        before attention fusion). The multimodal user rows are computed on demand (see
        :class:`DHMRecEmbeddings`)."""
        inputs, commons, specifics = self._disentangle()
        d = self.item_embedding.embedding_dim
        # All modality views share the full graph: propagate them as one wide matrix, users
        # seeded by their items (Eq. 8's users are needed only without the item-item views).
        items = torch.cat([inputs[v] for v in self.views], dim=-1)
        users, items = item_seeded_propagation(
            items, self.user_item, self.ui_propagation.num_layers, with_users=not self.item_graphs
        )
        if self.item_graphs:
            item_views = [
                self.ii_propagation(x, self.item_item[view])
                for x, view in zip(items.split(d, dim=1), self.views)
            ]
            items = torch.cat(item_views, dim=-1)
            users = self._to_users(items)  # Eq. 14, every view in one product
        if self.attention:
            maps = self._attention_maps(users, items)
            mm_item = self.fusion.attend(items, maps)
            mm_users = OnDemandRows(
                lambda rows: self.fusion.attend(users if rows is None else users[rows], maps)
            )
        else:
            mm_item = self._mean_view(items)
            mm_users = OnDemandRows(
                lambda rows: self._mean_view(users if rows is None else users[rows])
            )
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        id_emb = self.ui_propagation(ego, self.pruning())
        item = id_emb[self.num_users :] + self.alpha_mm * mm_item
        return DHMRecEmbeddings(
            None,
            item,
            {v: x for v, x in zip(self.views, items.split(d, dim=1)) if v in self.modalities},
            id=id_emb,
            mm_item=mm_item,
            mm_users=mm_users,
            commons=commons,
            specifics=specifics,
            alpha_mm=self.alpha_mm,
        )

    def _attention_maps(self, users: Tensor, items: Tensor) -> list[Tensor]:
        r"""Eqs. 15-16's maps over all nodes from the ``[d, V d]`` product :math:`E_{fus}^\top
        \hat{E}`. With the item-item views the users are :math:`\tilde{R} \hat{E}_I` (Eq. 14)
        and :math:`E_{fus}` is linear, so the users' part :math:`(\tilde{R} E_{fus,I})^\top
        \tilde{R} \hat{E}_I = E_{fus,I}^\top \tilde{R}^\top \hat{E}_U`: ``W_3`` runs on the
        items only and a sparse product replaces the users' dense ones."""
        if not self.item_graphs:
            return self.fusion.attention_maps([users, items])
        seen = items + self.user_item.apply_transpose(users)  # (I + R^T R) E_I
        cross = self.fusion.fuse(items).t() @ seen
        return self.fusion.maps_from_cross(cross, users.size(0) + items.size(0))

    def _mean_view(self, views: Tensor) -> Tensor:
        """The ``no_af`` fusion: the mean of the ``[n, V d]`` concatenated views."""
        return views.view(views.size(0), len(self.views), -1).mean(1)

    def ranking_parts(self, out: DHMRecEmbeddings) -> dict[str, Tensor]:
        """The two summands of Eq. 22, ``[U + I, d]`` each: ``id`` and ``mm`` (times
        :math:`\alpha_{mm}`); read by ``benchmarks/embedding_balance.py``."""
        return {"id": out.id, "mm": self.alpha_mm * out.mm}

    def _to_users(self, item_emb: Tensor) -> Tensor:
        """Eq. 14: users aggregate their interacted items, weighted 1/sqrt(|N_u||N_i|)."""
        return self.user_item(item_emb)

    @torch.no_grad()
    def item_representations(self) -> dict[str, Tensor]:
        """Item parts in eval mode: the modality-common ``common`` (C, Eq. 6), the
        modality-specific ``specific_<m>`` (S_m, Eq. 3) and the layer-0 ``id`` embeddings;
        with ``no_dis``, the projected features ``projected_<m>`` instead of C and S_m."""
        was_training = self.training
        self.eval()
        inputs, _, specifics = self._disentangle()
        out = {"id": self.item_embedding.weight}
        if self.disentangle:
            out["common"] = inputs["common"]
            out.update({f"specific_{m}": specifics[m] for m in self.modalities})
        else:
            out.update({f"projected_{m}": inputs[m] for m in self.modalities})
        self.train(was_training)
        return {k: v.detach().cpu() for k, v in out.items()}

    def loss(self, batch: BPRBatch, out: DHMRecEmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        # The batch's distinct users: their multimodal rows serve Eq. 22 and the KL alike (on
        # an accelerator every batch row, the repeats weighted 0: no wait for torch.unique).
        users, user_weight, inverse = distinct_rows(batch.user)
        mm_user = out.mm_users.rows(users)
        id_user, id_item = out.id.split([self.num_users, self.num_items])
        user = (id_user[users] + self.alpha_mm * mm_user)[inverse]
        out.batch_users = (batch.user, user)  # for plug-ins: no second pass over the users
        pos = (user * out.item[batch.pos_item]).sum(-1)
        neg = (user * out.item[batch.neg_item]).sum(-1)
        parts = {"bpr": bpr_loss(pos, neg)}
        if self.disentangle:
            items, item_weight, _ = distinct_rows(torch.cat([batch.pos_item, batch.neg_item]))
            commons = [out.commons[m][items] for m in self.modalities]
            parts["jsd"] = self.gamma_dis * jensen_shannon_divergence(commons, item_weight)
            parts["orth"] = self.gamma_dis * sum(
                orthogonality_loss(c, out.specifics[m][items], weight=item_weight)
                for m, c in zip(self.modalities, commons)
            )
        if self.kl_alignment:
            mm_item = out.mm_item
            if self.kl_items is not None and self.kl_items < self.num_items:
                sample = torch.randperm(self.num_items, device=id_item.device)[: self.kl_items]
                mm_item, id_item = mm_item[sample], id_item[sample]
            id_side = (id_user[users], id_item)
            if self.kl_detach_id:
                id_side = tuple(t.detach() for t in id_side)
            parts["kl"] = self.gamma_kl * score_distribution_kl(
                mm_user, mm_item, *id_side, user_weight
            )
        parts["reg"] = self.gamma_reg * squared_l2_penalty(
            self.user_embedding(batch.user),
            self.item_embedding(batch.pos_item),
            self.item_embedding(batch.neg_item),
        )
        return parts
