"""The interface every recommender implements; the trainer knows nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.dataset import RATES, item_features
from pyg_dhmrec.data.sampler import BPRBatch


class ModalityOutputs(NamedTuple):
    """What a multimodal model exposes to plug-in objectives (e.g. MRdIB), from one forward pass.

    ``user`` ``[U, d]`` and ``item`` ``[I, d]`` are the final scoring embeddings (``item`` is
    the fused representation); ``modalities`` maps each modality to its item representation
    before fusion, ``[I, d]`` with the same width ``d`` so that ``user @ rep.T`` is a score
    (a model whose scoring space is wider pads, e.g. VBPR's zero ID half). All share one
    autograd graph with the model's own loss.
    """

    user: Tensor
    item: Tensor
    modalities: dict[str, Tensor]


class Recommender(torch.nn.Module):
    r"""Base class of the models.

    A model implements

    * :meth:`forward` -> ``(user_emb [U, d], item_emb [I, d])`` on the training graph;
    * :meth:`loss` -> a dict of named loss parts for one :class:`BPRBatch` (the trainer
      optimises their sum and logs each part per epoch);
    * optionally :meth:`on_train_epoch_start` (e.g. resample a pruned graph) and
      :meth:`full_scores` (default: inner products of :meth:`forward`'s embeddings);
    * multimodal models: :meth:`forward_modalities`, with :meth:`forward` returning its
      ``(user, item)`` so that inside :meth:`memoized` both share one propagation.

    In eval mode the embeddings are computed once and cached until the model is put back in
    training mode, so ranking users in chunks propagates the graph only once.
    """

    #: Whether the model reads item modality features (then every configured one must exist).
    uses_modalities: bool = False

    def __init__(self, data: HeteroData) -> None:
        super().__init__()
        self.num_users = int(data["user"].num_nodes)
        self.num_items = int(data["item"].num_nodes)
        self._eval_embeddings: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def train_edge_index(data: HeteroData) -> Tensor:
        """The [2, E] (user, item) train interactions."""
        return data[RATES].edge_index

    def register_item_features(
        self, data: HeteroData, min_modalities: int = 1, prefix: str = "feat_"
    ) -> dict[str, Tensor]:
        """The item feature matrices of ``data`` (float, in dataset-config order), checked to
        number at least ``min_modalities`` with one row per item. Sets ``self.modalities`` and
        registers each as the non-persistent buffer ``<prefix><modality>``."""
        features = {m: x.detach().float() for m, x in item_features(data).items()}
        name = type(self).__name__
        if not features:
            raise ValueError(f"{name} needs at least one item modality, the dataset has none")
        if len(features) < min_modalities:
            raise ValueError(
                f"{name} needs at least {min_modalities} modalities, the dataset has "
                f"{list(features)}"
            )
        for m, x in features.items():
            if x.size(0) != self.num_items:
                raise ValueError(
                    f"modality '{m}' has {x.size(0)} feature rows, expected one per item "
                    f"({self.num_items})"
                )
            self.register_buffer(f"{prefix}{m}", x, persistent=False)
        self.modalities = list(features)
        return features

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def forward(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, batch: BPRBatch) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward_modalities(self) -> ModalityOutputs:
        """Final embeddings plus per-modality item representations (multimodal models)."""
        raise NotImplementedError(
            f"model {type(self).__name__} does not expose per-modality item representations "
            f"(forward_modalities)"
        )

    @classmethod
    def exposes_modalities(cls) -> bool:
        return cls.forward_modalities is not Recommender.forward_modalities

    @contextmanager
    def memoized(self) -> Iterator[None]:
        """Within the block, :meth:`forward` and :meth:`forward_modalities` run once and then
        return the same tensors, so a plug-in objective adds no second propagation."""
        cache: dict[str, object] = {}
        for name in ("forward", "forward_modalities"):
            compute = getattr(self, name)

            def cached(_name: str = name, _compute=compute):  # noqa: ANN202
                if _name not in cache:
                    cache[_name] = _compute()
                return cache[_name]

            object.__setattr__(self, name, cached)
        try:
            yield
        finally:
            for name in ("forward", "forward_modalities"):
                object.__delattr__(self, name)

    def on_train_epoch_start(self) -> None:
        """Called by the trainer before every training epoch."""

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
        out["final"] = self.forward()[1].detach().cpu()
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
        user_emb, item_emb = self._eval_embeddings
        return user_emb[users] @ item_emb.t()


def pair_scores(user_emb: Tensor, item_emb: Tensor, batch: BPRBatch) -> tuple[Tensor, Tensor]:
    """Inner-product scores of the batch's positive and negative pairs."""
    u = user_emb[batch.user]
    return (u * item_emb[batch.pos_item]).sum(-1), (u * item_emb[batch.neg_item]).sum(-1)
