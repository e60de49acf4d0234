"""Our models against MMRec's own code with the same weights, graph and batch.

For each model, a patched MMRec copy (``mmrec_side_by_side.prepare``: the same dataset files,
our configuration point) builds its model on ``--dataset`` in a child process and saves its
initial weights, its first training batch, the loss of that batch with every parameter's
gradient, the full-ranking scores of ``--users`` users (``full_sort_predict``, eval mode) and
any item-item graph it built from the features. This library then builds the same model on the
same folder, copies MMRec's weights into it (table ``MODELS``: MMRec's parameter name -> ours),
and computes the same things. Printed per model: whether both read the same train
interactions, how many rows of each kNN item graph differ, the largest score difference (and
its scale), the two losses, and per parameter the largest gradient difference over the
gradient's largest entry, beside the same measure for our float32 step against our float64 one
(the rounding a gradient has in float32; a gradient that sums entries of opposite sign has
much more than 1e-7). A gradient differs when its difference exceeds both ``--tolerance`` and
four times that rounding. Where a kNN graph differs (ties between neighbours, chosen
differently), the comparison is repeated with MMRec's graph in our model, which separates the
graph from the rest of the computation.

Randomness inside a step (dropout of BM3's target views, FREEDOM's and LayerGCN's edge
sampling, LGMRec's dependency dropout and relaxation noise) draws differently in the two
libraries, so it is switched off on both sides (``mmrec_overrides``, ``our_overrides``,
``noiseless``); every other setting is the configuration point of ``mmrec_side_by_side.py``.
FREEDOM runs with ``finetune_features: true``, as its code trains the feature table; GRCN with
``num_routing: 0`` and ``confidence_activation: relu``, the code's computation (GRCN's
docstring); DA-MRS at MMRec's point (``au_weight`` 0.1, ``ai_weight`` 0.01, 10 positives).

Where a model's docstring documents a choice that differs from MMRec's code and no setting
reproduces the code, ``ModelMap.adapt`` puts MMRec's computation into our model instance for
the comparison (printed), so that everything else is compared: LATTICE's backbone on D^-1(A+I)
and its learned graphs mixed before one normalisation (its raw features, trainable in MMRec,
stay fixed: their gradient is only reported); MMGCN's LeakyReLU after the mean, its
concatenating combination (an extra ``[d, d]`` block of W_3 per layer) and its mean over the
modalities, with its second modality raw (``raw_modalities``) and the penalty off on both sides
(MMRec's differs and trains nothing); DualGNN's user graph as MMRec drew it (users with fewer
than 40 co-occurring users pad by random draws) and MMRec's in-place sum into its vision
representation (DualGNN's docstring). DualGNN's BPR takes log2 in MMRec: our loss over ln 2
with ``reg_weight`` ln 2 times MMRec's is its loss (``loss_scale``), plus its penalty on
per-item weights it never uses (``penalties``, gradient compared)::

    python benchmarks/mmrec_transplant.py --mmrec ../MMRec --data-root ../shared/data \\
        --models BM3 LightGCN
    python benchmarks/mmrec_transplant.py --mmrec ../MMRec --data-root ../shared/data \\
        --models LATTICE DualGNN MMGCN DAMRS
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmrec_side_by_side import POINTS, prepare  # noqa: E402

from pyg_dhmrec.api import make_config  # noqa: E402
from pyg_dhmrec.data.graph import (  # noqa: E402
    cosine_knn_edges,
    csr_transpose,
    symmetric_normalize,
    to_csr,
)
from pyg_dhmrec.data.sampler import BPRBatch  # noqa: E402
from pyg_dhmrec.loader import load_data_and_model  # noqa: E402
from pyg_dhmrec.models.base import Embeddings  # noqa: E402
from pyg_dhmrec.nn import FrozenSparse, skip_connected_graph  # noqa: E402

#: run inside MMRec's ``src`` (its own module names: ``utils``, ``models``, ``common``)
DRIVER = r"""
import json, sys
import torch
from utils.configurator import Config
from utils.dataloader import TrainDataLoader
from utils.dataset import RecDataset
from utils.utils import get_model, init_seed

name, dataset, out, overrides, num_users, graphs, noiseless, tensors = sys.argv[1:9]
tensors = json.loads(tensors)


def attribute(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def saved(value):
    # a tensor to save: lists become tensors, mostly-zero dense matrices sparse
    value = torch.as_tensor(value).detach().cpu()
    if value.dim() == 2 and value.layout == torch.strided and value.is_floating_point():
        if float((value == 0).float().mean()) > 0.9:
            value = value.to_sparse()
    return value


if noiseless == "1":  # the relaxation's noise off: the softmax of logits / tau
    import torch.nn.functional as F
    F.gumbel_softmax = lambda logits, tau=1.0, hard=False, eps=1e-10, dim=-1: torch.softmax(
        logits / tau, dim=dim
    )
config = Config(name, dataset, {})
for key in config["hyper_parameters"]:  # quick_start's first grid point
    if isinstance(config[key], list):
        config[key] = config[key][0]
for key, value in json.loads(overrides).items():
    config[key] = value
init_seed(config["seed"])
train, _, _ = RecDataset(config).split()
str(train)  # sets inter_num, which the loader reads (quick_start logs it first)
loader = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
loader.pretrain_setup()
model = get_model(name)(config, loader).to(config["device"])
state = {k: v.detach().clone() for k, v in model.state_dict().items()}
for t in tensors:  # plain tensor attributes the computation reads (not in the state_dict)
    state[t] = attribute(model, t).detach().clone()
model.train()
if hasattr(model, "pre_epoch_processing"):
    model.pre_epoch_processing()
batch = next(iter(loader))
first = batch.clone()  # a model may shift the batch's ids in place (DualGNN)
loss = model.calculate_loss(batch)
loss = sum(loss) if isinstance(loss, tuple) else loss
loss.backward()
grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
for t in tensors:
    if attribute(model, t).grad is not None:
        grads[t] = attribute(model, t).grad.clone()
model.eval()
users = torch.arange(min(int(num_users), model.n_users))
with torch.no_grad():
    scores = model.full_sort_predict([users])
edges = torch.tensor(train.df[[config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]].values)
torch.save(
    {"state": state, "batch": first.cpu(), "loss": float(loss), "grads": grads,
     "users": users, "scores": scores.cpu(), "edges": edges,
     "graphs": {g: saved(attribute(model, g)) for g in json.loads(graphs)}},
    out,
)
"""


@dataclass
class ModelMap:
    """How one MMRec model's parameters and settings map to ours."""

    ours: str
    #: MMRec parameter name -> ours (a list: MMRec's is ours concatenated along the last
    #: dimension); ``{v}``/``{t}`` stand for MMRec's vision/text modality
    params: dict[str, str | list[str]]
    #: MMRec parameters without a counterpart -> why: each starts at zero or gets no gradient
    absent: dict[str, str] = field(default_factory=dict)
    #: settings that switch off a step's randomness: (MMRec keys, our keys)
    mmrec_overrides: dict[str, object] = field(default_factory=dict)
    our_overrides: dict[str, object] = field(default_factory=dict)
    #: our settings that state MMRec's configuration point (beyond our YAML's)
    our_point: dict[str, object] = field(default_factory=dict)
    #: MMRec parameters that are ours stacked along the first dimension (a list in ``params``)
    stacked: set[str] = field(default_factory=set)
    #: MMRec parameters stored transposed to ours (``[in, out]`` matrices)
    transposed: set[str] = field(default_factory=set)
    #: switch off relaxation noise: MMRec's ``F.gumbel_softmax`` and our
    #: ``relaxed_dependencies`` become the plain tempered softmax
    noiseless: bool = False
    #: frozen item-item graphs built from the features: (MMRec's attribute, our
    #: :class:`FrozenSparse` submodule or :class:`BufferGraph`), compared, then MMRec's swapped
    #: in where they differ
    item_graphs: list[tuple[str, str | BufferGraph]] = field(default_factory=list)
    #: graphs learned from the parameters: (MMRec's attribute after scoring, ours as a sparse
    #: ``[I, I]`` matrix from our model in eval mode), compared only
    learned_graphs: list[tuple[str, Callable[[torch.nn.Module], Tensor]]] = field(
        default_factory=list
    )
    #: MMRec tensors outside its ``state_dict`` that its computation reads (plain tensor
    #: attributes, e.g. MMGCN's ID embeddings): saved with their gradient, mapped in ``params``
    mmrec_tensors: list[str] = field(default_factory=list)
    #: other MMRec attributes to save after scoring (for ``adapt``), e.g. a sampled graph
    mmrec_saved: list[str] = field(default_factory=list)
    #: MMRec parameters that are ours with size-1 dimensions added or dropped (same order)
    reshaped: set[str] = field(default_factory=set)
    #: MMRec parameters we hold as a constant buffer (a documented choice): MMRec's name ->
    #: (our buffer, why); the value is copied into it, the gradient is only reported
    frozen: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: MMRec parameters that enter only a penalty of its loss, no score: name -> that penalty
    #: of the value; added to our loss, its gradient compared with MMRec's
    penalties: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    #: our summed loss times this is MMRec's (``our_point`` rescales the other terms to match)
    loss_scale: float = 1.0
    #: MMRec's computation put into our model where a documented choice has no setting:
    #: called with our model, its data and MMRec's saved tensors before the weights are copied
    #: (it may add parameters that MMRec's map to); its docstring's first paragraph is
    #: printed, the lines it returns too
    adapt: Callable[..., list[str]] | None = None


@dataclass
class BufferGraph:
    """An item graph our model holds as buffers: ``edge_index`` in (neighbour, item) order and
    its ``weight`` (``{m}`` stands for the modality)."""

    edge_index: str
    weight: str

    def names(self, names: dict[str, str]) -> tuple[str, str]:
        return self.edge_index.format(**names), self.weight.format(**names)


def our_graph(model: torch.nn.Module, ours: str | BufferGraph, names: dict[str, str]) -> Tensor:
    """Our item graph ``ours`` (see :attr:`ModelMap.item_graphs`) as a sparse matrix."""
    if isinstance(ours, str):
        return model.get_submodule(ours.format(**names)).matrix
    edge_index, weight = (model.get_buffer(n) for n in ours.names(names))
    n = model.num_items
    return torch.sparse_coo_tensor(edge_index.flip(0), weight, (n, n)).coalesce()


def swap_in(model: torch.nn.Module, ours: str | BufferGraph, names: dict, theirs: Tensor) -> None:
    """MMRec's item graph ``theirs`` in place of ours."""
    theirs = theirs.to_sparse() if theirs.layout == torch.strided else theirs.coalesce()
    if isinstance(ours, str):
        parent, _, leaf = ours.format(**names).rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, FrozenSparse(theirs.to_sparse_csr()))
        return
    edge_index, weight = ours.names(names)
    model.register_buffer(edge_index, theirs.indices().flip(0), persistent=False)
    model.register_buffer(weight, theirs.values(), persistent=False)


def mmgcn_as_mmrec(ours: torch.nn.Module, data: object, mmrec: dict) -> list[str]:
    """MMGCN as MMRec computes it: LeakyReLU after the mean (MMGCN docstring), each layer
    combining the neighbours h and its own x_hat = g(W_2 x + b_2) + e_id by concatenation,
    g(W_3 [h; x_hat] + b_3) (its concate flag is the string 'False', which is true), and the
    mean over the modalities (MMGCN docstring)

    The x_hat block of W_3 is a parameter added to each of our layers, ``combine_self``.
    """
    for layers in ours.layers.values():
        for layer in layers:
            width = layer.neighbour_transform.out_features
            layer.combine_self = torch.nn.Parameter(torch.zeros(width, width))

            def combine(aggregated, own, mean_adjacency, id_embedding, layer=layer):  # noqa: ANN001, ANN202
                h = F.leaky_relu(mean_adjacency(aggregated))
                x_hat = F.leaky_relu(own) + id_embedding
                transform = layer.neighbour_transform
                h = F.linear(h, transform.weight, transform.bias)
                return F.leaky_relu(h + F.linear(x_hat, layer.combine_self))

            layer.combine = combine
    plain = ours.forward

    def forward() -> Embeddings:
        out = plain()
        scale = len(ours.modalities)
        return Embeddings(out.user / scale, out.item / scale, out.modalities)

    ours.forward = forward
    return []


#: MMRec's regulariser weight at our configuration point (its YAML's grid narrowed to ours)
DUALGNN_REG = POINTS["DualGNN"]["reg_weight"][0]


def lattice_as_mmrec(ours: torch.nn.Module, data: object, mmrec: dict) -> list[str]:
    """LATTICE's two documented choices as MMRec computes them: the backbone on D^-1(A+I),
    the learned top-k graphs mixed by alpha before one normalisation"""
    edges = ours.train_edge_index(data)
    users, items = ours.num_users, ours.num_items
    n = users + items
    pairs = torch.stack([edges[0], edges[1] + users])
    index = torch.cat([pairs, pairs.flip(0), torch.arange(n).repeat(2, 1)], 1)
    adjacency = torch.sparse_coo_tensor(index, torch.ones(index.size(1)), (n, n)).coalesce()
    row, values = adjacency.indices()[0], adjacency.values()
    degree = torch.zeros(n).index_add_(0, row, values)
    values = values / degree[row]
    ours.adjacency = FrozenSparse(to_csr(adjacency.indices(), values, n, n))

    def mix(graphs: dict) -> tuple[Tensor, Tensor]:
        alpha = ours.modality_weights()
        learned, frozen = [], []
        for a, m in zip(alpha, ours.modalities):
            projected = ours.projections[m](ours.feature(m))
            index, similarity = cosine_knn_edges(projected, ours.knn_k, normalize=False)
            learned.append((index, a * similarity))
            weight = a * ours.get_buffer(f"init_weight_{m}")
            frozen.append((ours.get_buffer(f"init_edge_index_{m}"), weight))
        index = torch.cat([i for i, _ in learned], 1)
        _, weight = symmetric_normalize(index, items, torch.cat([w for _, w in learned]))
        frozen = (torch.cat([i for i, _ in frozen], 1), torch.cat([w for _, w in frozen]))
        return skip_connected_graph((index.flip(0), weight), frozen, ours.frozen_graph_weight)

    ours.mix_item_graphs = mix
    return []


def dualgnn_user_graph(ours: torch.nn.Module, data: object, mmrec: dict) -> list[str]:
    """MMRec's user graph of this epoch (its slots padded by its own random draws); its
    vision user part is the sum of both modalities' (MMRec's ``representation += t_rep`` adds
    in place to ``v_rep``, which it then fuses with ``t_rep``: w_v (h_v + h_t) + w_t h_t)"""
    slots = mmrec["graphs"]["epoch_user_graph"].long()
    weight = mmrec["graphs"]["user_weight_matrix"]
    weight = weight.to_dense() if weight.layout != torch.strided else weight
    n, k = slots.shape
    rows = torch.arange(n).unsqueeze(1).expand_as(slots)
    index = torch.stack([rows.reshape(-1), slots.reshape(-1)])

    def install() -> None:
        dtype = ours.user_graph_count.dtype  # float64 after .double()
        matrix = to_csr(index, weight.reshape(-1).to(dtype), n, n, dtype)
        ours._user_aggregation = (matrix, csr_transpose(matrix))

    mine = ours._user_aggregation[0].to_sparse_coo()
    install()
    diff = (mine - ours._user_aggregation[0].to_sparse_coo()).coalesce()
    differ = torch.unique(diff.indices()[0][diff.values().abs() > 1e-6])
    # users with fewer than k co-occurring users: slots padded by random draws, in each library
    degree = torch.bincount(ours.user_graph_edge_index[0], minlength=n)
    padded = int((degree[differ] < k).sum())
    ours.sample_user_graph = install  # what each epoch start draws: MMRec's slots
    plain = ours.fuse_users
    ours.fuse_users = lambda users: plain([torch.stack(users).sum(0), *users[1:]])
    return [
        f"- user graph (neighbour weights): differs in {differ.numel()} of {n} users' rows, "
        f"{padded} of them padded by random draws"
    ]


MODELS: dict[str, ModelMap] = {
    "LightGCN": ModelMap(
        "lightgcn",
        {
            "embedding_dict.user_emb": "user_embedding.weight",
            "embedding_dict.item_emb": "item_embedding.weight",
        },
    ),
    "BM3": ModelMap(
        "bm3",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "predictor.weight": "predictor.weight",
            "predictor.bias": "predictor.bias",
            "image_embedding.weight": "features.{v}",
            "image_trs.weight": "projections.{v}.weight",
            "image_trs.bias": "projections.{v}.bias",
            "text_embedding.weight": "features.{t}",
            "text_trs.weight": "projections.{t}.weight",
            "text_trs.bias": "projections.{t}.bias",
        },
        mmrec_overrides={"dropout": 0.0},
        our_overrides={"dropout": 0.0},
    ),
    "MGCN": ModelMap(
        "mgcn",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "image_embedding.weight": "features.{v}",
            "image_trs.weight": "projections.{v}.weight",
            "image_trs.bias": "projections.{v}.bias",
            "text_embedding.weight": "features.{t}",
            "text_trs.weight": "projections.{t}.weight",
            "text_trs.bias": "projections.{t}.bias",
            "gate_v.0.weight": "gates.{v}.linear.weight",
            "gate_v.0.bias": "gates.{v}.linear.bias",
            "gate_t.0.weight": "gates.{t}.linear.weight",
            "gate_t.0.bias": "gates.{t}.linear.bias",
            "query_common.0.weight": "fusion.attention_proj.weight",
            "query_common.0.bias": "fusion.attention_proj.bias",
            "query_common.2.weight": "fusion.attention_query.weight",
            # our fusion's preference gates follow the dataset's modality order (image, then
            # the other): MMRec's vision, then text
            "gate_image_prefer.0.weight": "fusion.preference.0.weight",
            "gate_image_prefer.0.bias": "fusion.preference.0.bias",
            "gate_text_prefer.0.weight": "fusion.preference.1.weight",
            "gate_text_prefer.0.bias": "fusion.preference.1.bias",
        },
        item_graphs=[
            ("image_original_adj", "item_item.{v}"),
            ("text_original_adj", "item_item.{t}"),
        ],
    ),
    "FREEDOM": ModelMap(
        "freedom",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "image_embedding.weight": "features.{v}",
            "image_trs.weight": "projections.{v}.weight",
            "text_embedding.weight": "features.{t}",
            "text_trs.weight": "projections.{t}.weight",
        },
        absent={
            "image_trs.bias": "cancels in the BPR difference (no gradient)",
            "text_trs.bias": "cancels in the BPR difference (no gradient)",
        },
        mmrec_overrides={"dropout": 0.0},
        our_overrides={"edge_dropout": 0.0},
        our_point={"finetune_features": True},
        item_graphs=[("mm_adj", "item_item")],
    ),
    "LGMRec": ModelMap(
        "lgmrec",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "item_image_trs": "projections.{v}.weight",
            "v_hyper": "hyperedges.{v}",
            "item_text_trs": "projections.{t}.weight",
            "t_hyper": "hyperedges.{t}",
        },
        transposed={"item_image_trs", "v_hyper", "item_text_trs", "t_hyper"},
        noiseless=True,
        mmrec_overrides={"keep_rate": 1.0},
        our_overrides={"keep_rate": 1.0},
    ),
    "GRCN": ModelMap(
        "grcn",
        {
            "id_gcn.id_embedding": ["user_embedding.weight", "item_embedding.weight"],
            "model_specific_conf": "edge_weights.confidence",
            "v_gcn.preference": "prototypes.{v}",
            "v_gcn.MLP.weight": "projections.{v}.weight",
            "v_gcn.MLP.bias": "projections.{v}.bias",
            "t_gcn.preference": "prototypes.{t}",
            "t_gcn.MLP.weight": "projections.{t}.weight",
            "t_gcn.MLP.bias": "projections.{t}.bias",
        },
        stacked={"id_gcn.id_embedding"},
        # the code's computation: prototypes that routing does not move, relu'd raw confidence
        our_point={"num_routing": 0, "confidence_activation": "relu"},
    ),
    "LayerGCN": ModelMap(
        "layergcn",
        {"user_embeddings": "user_embedding.weight", "item_embeddings": "item_embedding.weight"},
        mmrec_overrides={"dropout": 0.0},
        our_overrides={"edge_dropout": 0.0},
    ),
    "VBPR": ModelMap(
        "vbpr",
        {
            "u_embedding": "user_embedding.weight",
            "i_embedding": "item_embedding.weight",
            "item_linear.weight": ["projections.{t}.weight", "projections.{v}.weight"],
        },
        absent={"item_linear.bias": "not in the paper; only the norm penalty moves it"},
    ),
    # LATTICE's docstring choices without a setting (MMRec's backbone normalisation and mixing
    # order) are put into ours by lattice_as_mmrec; the learned graph is compared as well
    "LATTICE": ModelMap(
        "lattice",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "image_trs.weight": "projections.{v}.weight",
            "image_trs.bias": "projections.{v}.bias",
            "text_trs.weight": "projections.{t}.weight",
            "text_trs.bias": "projections.{t}.bias",
            # softmax of MMRec's [0.5, 0.5] and of our zeros: the same uniform weights
            "modal_weight": "modality_logits",
        },
        frozen={
            "image_embedding.weight": ("feat_{v}", "raw features fixed (LATTICE docstring)"),
            "text_embedding.weight": ("feat_{t}", "raw features fixed (LATTICE docstring)"),
        },
        item_graphs=[
            ("image_original_adj", BufferGraph("init_edge_index_{v}", "init_weight_{v}")),
            ("text_original_adj", BufferGraph("init_edge_index_{t}", "init_weight_{t}")),
        ],
        learned_graphs=[("item_adj", lambda model: model._item_operators()[0][0])],
        adapt=lattice_as_mmrec,
    ),
    # MMRec's BPR takes log2: our loss / ln 2 is its loss with our reg_weight ln 2 times its
    "DualGNN": ModelMap(
        "dualgnn",
        {
            "v_gcn.preference": "preferences.{v}",
            "v_gcn.MLP.weight": "projections.{v}.0.weight",
            "v_gcn.MLP.bias": "projections.{v}.0.bias",
            "v_gcn.MLP_1.weight": "projections.{v}.2.weight",
            "v_gcn.MLP_1.bias": "projections.{v}.2.bias",
            "t_gcn.preference": "preferences.{t}",
            "t_gcn.MLP.weight": "projections.{t}.0.weight",
            "t_gcn.MLP.bias": "projections.{t}.0.bias",
            "t_gcn.MLP_1.weight": "projections.{t}.2.weight",
            "t_gcn.MLP_1.bias": "projections.{t}.2.bias",
            "weight_u": "fusion_weights",  # [U, 2, 1]: vision, text; ours [U, M] image, audio
            # forward() stores each preference as a model attribute too, which registers it
            # under a second name: its gradient is saved under that one
            "v_preference": "preferences.{v}",
            "t_preference": "preferences.{t}",
        },
        reshaped={"weight_u"},
        absent={
            "MLP_v.weight": "unused by weighted_sum (no gradient)",
            "MLP_t.weight": "unused by weighted_sum (no gradient)",
            "MLP_user.weight": "unused by weighted_sum (no gradient)",
            "MLP_user.bias": "unused by weighted_sum (no gradient)",
        },
        # the per-item weights: regularised, never used (DualGNN docstring)
        penalties={"weight_i": lambda w: DUALGNN_REG * w.pow(2).mean()},
        loss_scale=1.0 / math.log(2.0),
        our_point={"reg_weight": DUALGNN_REG * math.log(2.0)},
        mmrec_saved=["epoch_user_graph", "user_weight_matrix"],
        adapt=dualgnn_user_graph,
    ),
    # MMRec's second modality raw (our raw_modalities), its other choices put into ours by
    # mmgcn_as_mmrec; the penalty off on both sides: MMRec's is on all users' visual
    # preferences, ours on the batch users' of every modality (MMGCN docstring), and MMRec trains
    # neither those nor its ID embeddings (plain tensors: its penalty is a constant there)
    "MMGCN": ModelMap(
        "mmgcn",
        {
            "id_embedding": ["user_embedding.weight", "item_embedding.weight"],
            "v_gcn.preference": "preferences.{v}",
            "v_gcn.MLP.weight": "projections.{v}.weight",
            "v_gcn.MLP.bias": "projections.{v}.bias",
            "t_gcn.preference": "preferences.{t}",
            **{
                f"{g}_gcn.{theirs.format(n=n + 1)}": f"layers.{{{g}}}.{n}.{ours}"
                for g in "vt"
                for n in range(3)
                for theirs, ours in [
                    ("conv_embed_{n}.weight", "aggregation.weight"),
                    ("linear_layer{n}.weight", "self_transform.weight"),
                    ("linear_layer{n}.bias", "self_transform.bias"),
                    ("g_layer{n}.bias", "neighbour_transform.bias"),
                ]
            },
            **{
                f"{g}_gcn.g_layer{n + 1}.weight": [
                    f"layers.{{{g}}}.{n}.neighbour_transform.weight",
                    f"layers.{{{g}}}.{n}.combine_self",
                ]
                for g in "vt"
                for n in range(3)
            },
        },
        stacked={"id_embedding"},
        transposed={f"{g}_gcn.conv_embed_{n}.weight" for g in "vt" for n in (1, 2, 3)},
        mmrec_tensors=["id_embedding", "v_gcn.preference", "t_gcn.preference"],
        mmrec_overrides={"reg_weight": 0.0},
        our_overrides={"reg_weight": 0.0},
        our_point={"raw_modalities": ["{t}"], "num_ui_layers": 3, "feature_dim": 256},
        adapt=mmgcn_as_mmrec,
    ),
    # MMRec's point: n_ui_layers 3, knn_k 5, kl_weight 0.1, neighbor_weight 0.01 (POINTS), and
    # its pseudo-labels' fixed 10 positives
    "DAMRS": ModelMap(
        "damrs",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
        },
        absent={
            "image_trs.weight": "built, never used (no gradient)",
            "image_trs.bias": "built, never used (no gradient)",
            "text_trs.weight": "built, never used (no gradient)",
            "text_trs.bias": "built, never used (no gradient)",
        },
        our_point={
            "num_ui_layers": POINTS["DAMRS"]["n_ui_layers"][0],
            "knn_k": POINTS["DAMRS"]["knn_k"],
            "au_weight": POINTS["DAMRS"]["kl_weight"][0],
            "ai_weight": POINTS["DAMRS"]["neighbor_weight"][0],
            "num_positives": 10,
        },
        item_graphs=[
            ("image_adj", "modality_graphs.{v}"),
            ("text_adj", "modality_graphs.{t}"),
            ("session_adj", "behaviour_graph"),
        ],
    ),
}


def mmrec_side(src: Path, model: str, args: argparse.Namespace) -> dict:
    """Run the driver in MMRec's ``src``; its saved tensors."""
    (src / "_transplant_driver.py").write_text(DRIVER)
    out = Path(args.work) / f"{model}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    paths = [str(src.parent / "stubs"), str(src.parent / "scatter_shim")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    spec = MODELS[model]
    overrides = json.dumps(spec.mmrec_overrides)
    graphs = [theirs for theirs, _ in spec.item_graphs + spec.learned_graphs]
    graphs = json.dumps(graphs + spec.mmrec_saved)
    noiseless = "1" if spec.noiseless else "0"
    command = [args.python, "_transplant_driver.py", model, args.dataset, str(out), overrides]
    done = subprocess.run(
        [*command, str(args.users), graphs, noiseless, json.dumps(spec.mmrec_tensors)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])
        raise RuntimeError(f"MMRec {model} failed (exit {done.returncode}): {tail}")
    return torch.load(out, weights_only=False)


def modality_names(args: argparse.Namespace) -> dict[str, str]:
    """MMRec's ``v_feat``/``t_feat`` modality names, as ``prepare`` chose the files."""
    folder = Path(args.data_root) / args.dataset
    feats = sorted(p.name for p in folder.glob("*_feat.npy"))
    vision = "image_feat.npy" if "image_feat.npy" in feats else feats[0]
    text = next(f for f in (["text_feat.npy"] + feats) if f in feats and f != vision)
    return {"v": vision.removesuffix("_feat.npy"), "t": text.removesuffix("_feat.npy")}


def our_settings(spec: ModelMap, names: dict[str, str]) -> dict[str, object]:
    """``our_point`` and ``our_overrides``, ``{v}``/``{t}`` in their strings (and lists of
    strings) replaced by the modality names."""

    def named(value: object) -> object:
        if isinstance(value, str):
            return value.format(**names)
        return [named(v) for v in value] if isinstance(value, list) else value

    return {k: named(v) for k, v in {**spec.our_point, **spec.our_overrides}.items()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest entry difference over the largest entry of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def item_graph_rows(ours: torch.Tensor, theirs: torch.Tensor) -> int:
    """Rows of two ``[I, I]`` item-item graphs (sparse or dense) that differ (an entry by
    more than 1e-6)."""
    theirs = theirs if theirs.layout == torch.strided else theirs.coalesce().to_dense()
    diff = (ours.to_dense() - theirs).abs()
    return int((diff.amax(1) > 1e-6).sum())


def compare(
    model: str, mmrec: dict, args: argparse.Namespace, their_graph: bool = False
) -> list[str]:
    """The comparison's lines; ``their_graph``: with MMRec's item-item graphs in ours."""
    spec = MODELS[model]
    names = modality_names(args)
    config = make_config(
        spec.ours, args.dataset, data_root=args.data_root, device="cpu", **our_settings(spec, names)
    )
    _, data, ours = load_data_and_model(config)
    edges = ours.train_edge_index(data)
    same_graph = torch.equal(
        torch.unique(edges.t(), dim=0), torch.unique(mmrec["edges"].long(), dim=0)
    )
    lines = [f"## {model} ({spec.ours}) on {args.dataset}"]
    lines.append(f"- same train interactions: {same_graph}")
    for their_name, our_name in spec.item_graphs:
        theirs = mmrec["graphs"][their_name]
        rows = item_graph_rows(our_graph(ours, our_name, names), theirs)
        label = our_name.format(**names) if isinstance(our_name, str) else their_name
        lines.append(f"- item-item graph {label}: {rows} of {theirs.size(0)} rows differ")
        if their_graph:
            swap_in(ours, our_name, names, theirs)
    if their_graph:
        lines[0] += ", with MMRec's item-item graphs"
    if spec.adapt is not None:  # before the copy: it may add MMRec's parameters to ours
        doc = " ".join((spec.adapt.__doc__ or spec.adapt.__name__).split("\n\n")[0].split())
        lines.append(f"- MMRec's computation in ours: {doc}")
        lines += spec.adapt(ours, data, mmrec)
    params = dict(ours.named_parameters())

    def counterpart(theirs: str) -> list[str]:
        target = spec.params[theirs]
        return [t.format(**names) for t in ([target] if isinstance(target, str) else target)]

    with torch.no_grad():
        for theirs, value in mmrec["state"].items():
            if theirs in spec.frozen:
                buffer = ours.get_buffer(spec.frozen[theirs][0].format(**names))
                if buffer.shape != value.shape:
                    raise ValueError(f"{model}: {theirs} {tuple(value.shape)} -> {buffer.shape}")
                buffer.copy_(value)
                continue
            if theirs in spec.absent or theirs in spec.penalties:
                grad = mmrec["grads"].get(theirs)
                moved = grad is not None and grad.abs().max() > 1e-6 * grad.new_ones(()).max()
                if value.abs().max() > 0 and moved and theirs not in spec.penalties:
                    raise ValueError(f"{model}: {theirs} has no counterpart, is not zero, trains")
                continue
            if theirs not in spec.params:
                if theirs in mmrec["grads"]:
                    raise KeyError(f"{model}: MMRec parameter {theirs} has no counterpart")
                continue  # a buffer (graphs, features)
            value = value.t() if theirs in spec.transposed else value
            targets = [params[name] for name in counterpart(theirs)]
            if theirs in spec.reshaped and len(targets) == 1:
                if value.numel() == targets[0].numel():
                    value = value.reshape(targets[0].shape)
            dim = 0 if theirs in spec.stacked else -1
            widths = [t.size(dim) for t in targets]
            blocks = value.split(widths, dim=dim) if value.size(dim) == sum(widths) else ()
            if [b.shape for b in blocks] != [t.shape for t in targets]:
                shapes = [tuple(t.shape) for t in targets]
                raise ValueError(f"{model}: {theirs} {tuple(value.shape)} -> {shapes}")
            for target, block in zip(targets, blocks):
                target.copy_(block)
    batch = mmrec["batch"]
    neg = batch[2] if batch.size(0) > 2 else batch[1]  # BM3's batch has no negatives
    batch = BPRBatch(batch[0], batch[1], neg)
    with noiseless_relaxation(spec.noiseless):
        loss, grads = step_gradients(ours, batch)
        ours.eval()
        with torch.no_grad():
            scores = ours.full_scores(mmrec["users"])
            learned = {theirs: mine(ours) for theirs, mine in spec.learned_graphs}
        # float32 rounding of each gradient: ours against the same step in float64
        _, exact = step_gradients(ours.double(), batch)
    # MMRec's loss scale; its penalties on parameters we do not have, with their gradients
    loss *= spec.loss_scale
    for n in grads:
        grads[n], exact[n] = grads[n] * spec.loss_scale, exact[n] * spec.loss_scale
    for theirs, penalty in spec.penalties.items():
        value = mmrec["state"][theirs]
        for dtype, into in ((torch.float32, grads), (torch.float64, exact)):
            leaf = value.detach().to(dtype).requires_grad_()
            term = penalty(leaf)
            term.backward()
            into[theirs] = leaf.grad
            if dtype == torch.float32:
                loss += float(term.detach())
    lines.append(
        f"- scores of {len(mmrec['users'])} users: max |ours - MMRec| "
        f"{float((scores - mmrec['scores']).abs().max()):.3g} "
        f"(relative {relative(scores, mmrec['scores']):.3g})"
    )
    for theirs, matrix in learned.items():
        rows = item_graph_rows(matrix, mmrec["graphs"][theirs])
        lines.append(f"- learned graph {theirs}: {rows} of {matrix.size(0)} rows differ")
    lines.append(
        f"- loss of the first batch: ours {loss:.7f}, MMRec {mmrec['loss']:.7f} "
        f"(relative difference {abs(loss - mmrec['loss']) / abs(mmrec['loss']):.3g})"
    )
    differing = []
    reported = 0
    for theirs, grad in mmrec["grads"].items():
        grad = grad.t() if theirs in spec.transposed else grad
        reported += 1
        if theirs in spec.absent or theirs in spec.frozen:
            size = float(grad.abs().max())
            why = spec.absent[theirs] if theirs in spec.absent else spec.frozen[theirs][1]
            lines.append(f"  - gradient {theirs}: no counterpart, max {size:.3g} ({why})")
            continue
        if theirs in spec.penalties:
            targets, mine, reference = ["its penalty"], grads[theirs], exact[theirs]
        else:
            targets = counterpart(theirs)
            dim = 0 if theirs in spec.stacked else -1
            mine = torch.cat([grads[n] for n in targets], dim)
            reference = torch.cat([exact[n] for n in targets], dim)
            if theirs in spec.reshaped:
                mine, reference = mine.reshape(grad.shape), reference.reshape(grad.shape)
        diff = relative(mine, grad)
        rounding = relative(mine.double(), reference)
        if diff > max(args.tolerance, 4 * rounding):
            differing.append(theirs)
        # where the difference exceeds our rounding: MMRec's own rounding, if this is as large
        theirs_rounding = relative(grad.double(), reference)
        lines.append(
            f"  - gradient {theirs} -> {' | '.join(targets)}: relative max difference "
            f"{diff:.3g} (ours float32 vs float64: {rounding:.3g}; MMRec vs our float64: "
            f"{theirs_rounding:.3g})"
        )
    verdict = f"DIFFERENT: {', '.join(differing)}" if differing else "equal to float32 rounding"
    at = len(lines) - reported
    lines.insert(at, f"- gradients (largest entry difference over the largest entry): {verdict}")
    return lines


@contextlib.contextmanager
def noiseless_relaxation(active: bool) -> Iterator[None]:
    """Our relaxed hyperedge dependencies without their sampled noise, while active."""
    if not active:
        yield
        return
    from pyg_dhmrec.models import lgmrec

    plain = lgmrec.relaxed_dependencies
    lgmrec.relaxed_dependencies = lambda logits, temperature, noise=False: plain(
        logits, temperature, False
    )
    try:
        yield
    finally:
        lgmrec.relaxed_dependencies = plain


def step_gradients(model: torch.nn.Module, batch: BPRBatch) -> tuple[float, dict[str, Tensor]]:
    """The summed loss of one training step on ``batch`` and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    model.train()
    model.on_train_epoch_start()
    loss = sum(model.loss(batch).values())
    loss.backward()
    grads = {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in model.named_parameters()
    }
    return float(loss.detach()), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmrec", required=True, help="an MMRec checkout (with src/main.py)")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--users", type=int, default=1024, help="users whose scores compare")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--python", default=sys.executable, help="interpreter for MMRec")
    parser.add_argument("--work", default="/tmp/mmrec-transplant")
    args = parser.parse_args()
    if not (Path(args.mmrec) / "src" / "main.py").is_file():
        parser.error(f"--mmrec {args.mmrec}: no src/main.py (an MMRec checkout expected)")
    args.accuracy, args.device = False, "cpu"  # what prepare() reads
    src = prepare(args)
    for model in args.models:
        mmrec = mmrec_side(src, model, args)
        lines = compare(model, mmrec, args)
        print("\n".join(lines), flush=True)
        if any(" rows differ" in line and ": 0 of " not in line for line in lines):
            print("\n".join(compare(model, mmrec, args, their_graph=True)), flush=True)


if __name__ == "__main__":
    main()
