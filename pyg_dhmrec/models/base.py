"""The interface every recommender implements; the trainer knows nothing else."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.dataset import RATES, check_interaction_graph, item_features
from pyg_dhmrec.data.graph import to_csr
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import DerivedGraph, add_derived_graphs
from pyg_dhmrec.models.validation import check_bool


@dataclass
class Embeddings:
    """One forward pass of a model: what :meth:`Recommender.loss`, plug-in objectives and
    ranking read.

    ``user`` ``[U, d]`` and ``item`` ``[I, d]`` are the final scoring embeddings. Multimodal
    models fill ``modalities``: each modality's item representation before fusion, ``[I, d]``
    with the same width ``d`` so that ``user @ rep.T`` is a score (a model whose scoring space
    is wider pads, e.g. VBPR's zero ID half). A model whose loss needs more of the same pass
    subclasses this dataclass with its own fields. All share one autograd graph.
    """

    user: Tensor
    item: Tensor
    modalities: dict[str, Tensor] = field(default_factory=dict)

    def user_rows(self, index: Tensor) -> Tensor:
        """``user[index]``; a model whose user rows are computed on demand may serve the rows
        its loss already computed (plug-ins read the batch's users through this)."""
        return self.user[index]


class OnDemandRows:
    """The rows of an ``[n, d]`` table, computed on demand by ``compute`` (a function of an
    index tensor, or ``None`` for every row).

    :meth:`rows` computes only the rows asked for, until :meth:`table` has computed every row
    once; from then on rows are read from the table. For models whose training loss reads a
    few rows of an expensive per-row map (e.g. a batch's users), while the
    :class:`Embeddings` contract (full tables) still holds on request.
    """

    def __init__(self, compute: Callable[[Tensor | None], Tensor]) -> None:
        self.compute = compute
        self._table: Tensor | None = None

    def table(self) -> Tensor:
        """Every row, computed once."""
        if self._table is None:
            self._table = self.compute(None)
        return self._table

    def rows(self, index: Tensor) -> Tensor:
        """``table()[index]``, computing only those rows unless the table exists."""
        return self._table[index] if self._table is not None else self.compute(index)


@dataclass
class OnDemandEmbeddings(Embeddings):
    """:class:`Embeddings` whose full ``user``, ``item`` or ``modalities`` tables may be left
    ``None`` by the forward pass and are computed on first access, in the same autograd graph,
    by :meth:`compute_user`, :meth:`compute_item` and :meth:`compute_modalities`: a training
    step that reads only its batch's rows never pays for the rest, and the :class:`Embeddings`
    contract (full tables on request) still holds. A subclass overrides the ``compute_*`` of
    the tables it leaves ``None``."""

    def compute_user(self) -> Tensor:
        """Every user's final row, ``[U, d]``."""
        raise NotImplementedError(f"{type(self).__name__} was built without user embeddings")

    def compute_item(self) -> Tensor:
        """Every item's final row, ``[I, d]``."""
        raise NotImplementedError(f"{type(self).__name__} was built without item embeddings")

    def compute_modalities(self) -> dict[str, Tensor]:
        """Every item's row per modality."""
        raise NotImplementedError(f"{type(self).__name__} was built without modality rows")

    @property
    def user(self) -> Tensor:  # type: ignore[override]
        if self._user is None:
            self._user = self.compute_user()
        return self._user

    @user.setter
    def user(self, value: Tensor | None) -> None:
        self._user = value

    @property
    def item(self) -> Tensor:  # type: ignore[override]
        if self._item is None:
            self._item = self.compute_item()
        return self._item

    @item.setter
    def item(self, value: Tensor | None) -> None:
        self._item = value

    @property
    def modalities(self) -> dict[str, Tensor]:  # type: ignore[override]
        if self._modalities is None:
            self._modalities = self.compute_modalities()
        return self._modalities

    @modalities.setter
    def modalities(self, value: dict[str, Tensor] | None) -> None:
        self._modalities = value


class Recommender(torch.nn.Module):
    r"""Base class of the models.

    A model implements

    * :meth:`forward` -> :class:`Embeddings`, one pass over the training graph;
    * :meth:`loss` ``(batch, out)`` -> a dict of named loss parts for one :class:`BPRBatch`
      from the pass ``out`` (the trainer calls :meth:`forward` once per step, hands its output
      to :meth:`loss` and to plug-in objectives, optimises the sum of the parts and logs each
      part per epoch);
    * optionally :meth:`on_train_epoch_start` (e.g. resample a pruned graph),
      :meth:`full_scores` (default: inner products of :meth:`forward`'s embeddings) and
      :meth:`graph_transforms` (the derived edge types it reads from ``data``).

    **Per-epoch hooks.** The trainer runs every epoch, in this order (under DDP after every
    rank took rank 0's torch RNG state, so every rank draws the same numbers):

    1. :meth:`train_phase` (optional): a phase the model runs on its own, with its own
       optimiser, over the parameters it declares in :meth:`phase_parameters` (e.g. DiffMM's
       denoisers). The trainer builds that optimiser once with :meth:`phase_optimizer`, leaves
       those parameters out of the main Adam optimiser (and out of DDP's gradient averaging:
       every rank runs the same phase on the same numbers instead), keeps the optimiser's state
       in the checkpoint, and logs the phase's mean losses as ``phase_<name>`` beside the
       epoch's loss parts (names in :attr:`phase_loss_parts`). The phase draws its randomness
       from torch's global RNG, which the checkpoint restores, so ``--resume`` continues it
       exactly; anything else it needs across epochs must be a parameter or a persistent buffer.
    2. :meth:`on_train_epoch_start` (optional): per-epoch graph work (FREEDOM's
       degree-sensitive dropout, LATTICE's learned graph, DiffMM's generated graphs, rebuilt
       from the denoisers the phase just trained).
    3. The BPR batches: one :meth:`forward` and :meth:`loss` per batch, main Adam step.

    ``exposes_modalities`` is true for models whose :class:`Embeddings` carry per-modality item
    representations (what plug-in objectives such as MRdIB need).

    In eval mode the embeddings are computed once and cached until the model is put back in
    training mode, so ranking users in chunks propagates the graph only once.
    """

    #: Whether the model reads item modality features (then every configured one must exist).
    uses_modalities: bool = False
    #: Whether :meth:`forward` fills :attr:`Embeddings.modalities`.
    exposes_modalities: bool = False
    #: Names of the loss parts :meth:`loss` returns at the default settings (logged per epoch).
    loss_parts: tuple[str, ...] = ()
    #: Names of the mean losses :meth:`train_phase` returns (logged as ``phase_<name>``).
    phase_loss_parts: tuple[str, ...] = ()

    def __init__(self, data: HeteroData) -> None:
        super().__init__()
        check_interaction_graph(data, ("train",))  # valid and test: the trainer's
        self.num_users = int(data["user"].num_nodes)
        self.num_items = int(data["item"].num_nodes)
        self._eval_embeddings: Embeddings | None = None

    @staticmethod
    def train_edge_index(data: HeteroData) -> Tensor:
        """The [2, E] (user, item) train interactions."""
        return data[RATES].edge_index

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        """The transforms whose edge types the model reads from ``data``, for the constructor
        arguments ``settings``. The dataset loader applies them with a cache before building
        the model; the constructor builds (uncached) any that ``data`` lacks."""
        return []

    def with_graphs(self, data: HeteroData, **settings: Any) -> HeteroData:
        """``data`` holding the edge types of :meth:`graph_transforms` for ``settings``."""
        return add_derived_graphs(data, self.graph_transforms(settings))

    def item_graph(self, data: HeteroData, edge_type: tuple[str, str, str]) -> Tensor:
        """The item-item graph ``edge_type`` of ``data`` (weighted) as ``[I, I]`` CSR."""
        store = data[edge_type]
        return to_csr(store.edge_index, store.edge_weight, self.num_items, self.num_items)

    def register_item_features(
        self,
        data: HeteroData,
        min_modalities: int = 1,
        prefix: str = "feat_",
        center: bool = False,
        finetune: bool = False,
    ) -> dict[str, Tensor]:
        r"""The item feature matrices of ``data`` (float, in dataset-config order), checked to
        number at least ``min_modalities`` with one row per item. Sets ``self.modalities`` and
        registers each as the non-persistent buffer ``<prefix><modality>``; :meth:`feature`
        reads them back. ``center=True`` also registers each modality's mean row over the items,
        :math:`\mu` (``[f]``, :meth:`feature_mean`), for models whose inputs should not share one
        direction: a bias-free linear map gives :math:`W(X - \mathbf{1}\mu^\top) = WX -
        \mathbf{1}(W\mu)^\top` without a centred copy of :math:`X` (on 4096-d image features
        that copy would be as large as the features).

        ``finetune=True`` (the ``finetune_features`` setting of models whose reference code loads
        the features as a trainable table, ``nn.Embedding.from_pretrained(freeze=False)``) also
        registers a trainable copy of each as ``self.features[m]``: :meth:`input_feature` reads
        it, :meth:`reset_item_features` restores it from the buffer."""
        features = {m: x.detach().float() for m, x in item_features(data).items()}
        name = type(self).__name__
        if not features:
            raise ValueError(f"{name} needs at least one item modality, the dataset has none")
        if len(features) < min_modalities:
            raise ValueError(
                f"{name} needs at least {min_modalities} modalities, the dataset has "
                f"{list(features)}"
            )
        for m, x in features.items():  # shapes and values: checked in __init__
            self.register_buffer(f"{prefix}{m}", x, persistent=False)
            if center:
                self.register_buffer(f"{prefix}{m}_mean", x.mean(0), persistent=False)
        self.modalities = list(features)
        self._feature_prefix = prefix
        self.finetune_features = check_bool("finetune_features", finetune)
        if finetune:
            self.features = torch.nn.ParameterDict(
                {m: torch.nn.Parameter(x.clone()) for m, x in features.items()}
            )
        return features

    def input_feature(self, modality: str) -> Tensor:
        """The ``[I, f]`` features the model reads: the trained copy when fine-tuned, else the
        raw buffer (see :meth:`register_item_features`)."""
        return self.features[modality] if self.finetune_features else self.feature(modality)

    @torch.no_grad()
    def reset_item_features(self) -> None:
        """Restore fine-tuned features to the raw ones (nothing to do when frozen)."""
        if self.finetune_features:
            for m, p in self.features.items():
                p.copy_(self.feature(m))

    def feature(self, modality: str) -> Tensor:
        """The raw ``[I, f]`` features of ``modality`` (see :meth:`register_item_features`)."""
        return self.get_buffer(f"{self._feature_prefix}{modality}")

    def feature_mean(self, modality: str) -> Tensor | None:
        """The ``[f]`` mean row of ``modality``'s features over the items, when
        :meth:`register_item_features` was asked to ``center`` (``None`` otherwise)."""
        name = f"{self._feature_prefix}{modality}_mean"
        return self.get_buffer(name) if hasattr(self, name) else None

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def forward(self) -> Embeddings:
        raise NotImplementedError

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        """Named loss parts of ``batch`` from the pass ``out`` (``None``: run :meth:`forward`,
        or only the part of it the batch reads; the trainer passes ``None``)."""
        raise NotImplementedError

    def on_train_epoch_start(self) -> None:
        """Called by the trainer before every training epoch's BPR batches (after
        :meth:`train_phase`), in training mode: resample or rebuild per-epoch graphs here."""

    def phase_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that only :meth:`train_phase` trains (default: none, no phase). The
        main optimiser and DDP leave them out; the main loss must not depend on them."""
        return []

    def phase_optimizer(self) -> torch.optim.Optimizer | None:
        """A new optimiser over exactly :meth:`phase_parameters` (``None`` without a phase).
        The trainer calls it once and owns the result (its state goes into checkpoints)."""
        return None

    def train_phase(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """The model's own training phase of ``epoch`` (1-based), run before
        :meth:`on_train_epoch_start`: steps ``optimizer`` (the one :meth:`phase_optimizer`
        built) and returns the phase's mean losses by name (:attr:`phase_loss_parts`)."""
        return {}

    @torch.no_grad()
    def item_representations(self) -> dict[str, Tensor]:
        """Item embeddings by part, computed in eval mode (for t-SNE plots): the layer-0 ID
        embeddings where the model has them, and the final (scoring) embeddings."""
        was_training = self.training
        self.eval()
        out = {}
        ids = getattr(self, "item_embedding", None)
        if isinstance(ids, torch.nn.Embedding):
            out["id"] = ids.weight.detach().cpu()
        out["final"] = self.forward().item.detach().cpu()
        self.train(was_training)
        return out

    def train(self, mode: bool = True) -> Recommender:
        self._eval_embeddings = None
        return super().train(mode)

    @torch.no_grad()
    def full_scores(self, users: Tensor) -> Tensor:
        """Scores ``[len(users), num_items]`` of every item for ``users`` (eval mode)."""
        if self.training:
            raise RuntimeError("full_scores is for evaluation: call model.eval() first")
        if self._eval_embeddings is None:
            self._eval_embeddings = self.forward()
        out = self._eval_embeddings
        return out.user[users] @ out.item.t()


def pair_rows(user_emb: Tensor, item_emb: Tensor, batch: BPRBatch) -> tuple[Tensor, Tensor, Tensor]:
    """The batch's rows ``(users, positive items, negative items)`` of the embeddings; a loss
    that reads them twice (scores and a penalty) gathers them once: every gather's backward
    zero-fills a gradient of the whole table."""
    return user_emb[batch.user], item_emb[batch.pos_item], item_emb[batch.neg_item]


def pair_scores(user_emb: Tensor, item_emb: Tensor, batch: BPRBatch) -> tuple[Tensor, Tensor]:
    """Inner-product scores of the batch's positive and negative pairs."""
    u = user_emb[batch.user]
    return (u * item_emb[batch.pos_item]).sum(-1), (u * item_emb[batch.neg_item]).sum(-1)


def distinct_rows(
    index: Tensor, sync_free: bool | None = None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The rows a loss over the distinct entries of ``index`` (e.g. a batch's users) reads, as
    ``(rows, weight, inverse)`` with ``rows[inverse]`` equal to ``index``.

    Without ``sync_free`` (the default on the CPU) ``rows`` are the distinct ids
    (``torch.unique``) and ``weight`` is ``None``. With it (the default elsewhere: the size of
    ``torch.unique``'s output makes the host wait for the device) ``rows`` is ``index`` itself
    and ``weight`` is 1.0 at each id's first occurrence and 0.0 at its repeats, so a
    ``weight``-ed mean over the rows (:func:`~pyg_dhmrec.nn.weighted_mean`) is the mean over
    the distinct ids, with shapes known in advance.
    """
    if sync_free is None:
        sync_free = index.device.type != "cpu"
    if not sync_free:
        rows, inverse = torch.unique(index, return_inverse=True)
        return rows, None, inverse
    order = index.argsort(stable=True)
    ordered = index[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    weight = torch.empty_like(first).scatter_(0, order, first).float()
    return index, weight, torch.arange(index.numel(), device=index.device)
