"""The public building blocks (``pyg_dhmrec.nn``, ``pyg_dhmrec.data``) called the way a
researcher's own PyG code calls them: a wrong input is a ValueError/TypeError naming the
argument, and valid but unusual inputs (float64, int32 ids, one row, no edges, non-contiguous
tensors) give the dense formula's value and gradient."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from pyg_dhmrec import nn as N
from pyg_dhmrec.data import graph as G
from pyg_dhmrec.data.sampler import BPRSampler

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")

EDGES = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2]])


def _adjacency() -> torch.Tensor:
    return G.normalized_adjacency(EDGES, 3, 3)


def _double(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()


# --- wrong inputs: an error naming the argument ----------------------------------------------

ADJ = _adjacency()
OP = N.FrozenSparse(ADJ, symmetric=True)
X = torch.randn(6, 4)

BAD_INPUTS = [
    ("FrozenSparse rows", lambda: OP(torch.randn(5, 4)), ValueError, "x must have 6 rows"),
    ("FrozenSparse 1-D", lambda: OP(torch.randn(6)), ValueError, "x must be a 2-D"),
    ("FrozenSparse dtype", lambda: OP(X.double()), TypeError, "x has dtype torch.float64"),
    ("FrozenSparse int", lambda: OP(X.long()), TypeError, "x must be a floating-point"),
    ("FrozenSparse sparse x", lambda: OP(X.to_sparse()), TypeError, "x must be a dense"),
    (
        "LightPropagation rows",
        lambda: N.LightPropagation(2)(torch.randn(5, 4), ADJ),
        ValueError,
        "x must have 6 rows",
    ),
    (
        "LightPropagation dtype",
        lambda: N.LightPropagation(2)(X.double(), ADJ),
        TypeError,
        "x has dtype torch.float64 but adj torch.float32",
    ),
    (
        "LightPropagation dense adj",
        lambda: N.LightPropagation(2)(X, ADJ.to_dense()),
        TypeError,
        "adj must be a sparse",
    ),
    (
        "LightPropagation first_hop",
        lambda: N.LightPropagation(2)(X, ADJ, first_hop=torch.randn(5, 4)),
        ValueError,
        "first_hop must have the shape of x",
    ),
    ("symmetric_spmm dense", lambda: N.symmetric_spmm(ADJ.to_dense(), X), TypeError, "adj must"),
    (
        "constant_spmm adj_t",
        lambda: N.constant_spmm(ADJ, X, G.user_item_matrix(EDGES, 3, 3)),
        ValueError,
        "adj_t must be the",
    ),
    (
        "sparse_rows_matmul out of range",
        lambda: N.sparse_rows_matmul(ADJ, torch.tensor([6]), X),
        ValueError,
        r"rows must be row ids in \[0, 6\)",
    ),
    (
        "sparse_rows_matmul negative",
        lambda: N.sparse_rows_matmul(ADJ, torch.tensor([-1]), X),
        ValueError,
        "rows must be row ids",
    ),
    (
        "sparse_rows_matmul float rows",
        lambda: N.sparse_rows_matmul(ADJ, torch.tensor([1.0]), X),
        TypeError,
        "rows must be an integer",
    ),
    (
        "sparse_rows_matmul x",
        lambda: N.sparse_rows_matmul(ADJ, torch.tensor([1]), torch.randn(2, 4)),
        ValueError,
        "x must have 6 rows",
    ),
    (
        "item_seeded_propagation tensor",
        lambda: N.item_seeded_propagation(torch.randn(3, 4), G.user_item_matrix(EDGES, 3, 3), 2),
        TypeError,
        "user_item must be a FrozenSparse",
    ),
    (
        "item_seeded_propagation rows",
        lambda: N.item_seeded_propagation(
            torch.randn(4, 4), N.FrozenSparse(G.user_item_matrix(EDGES, 3, 3)), 2
        ),
        ValueError,
        "items must have 3 rows",
    ),
    ("bpr_loss empty", lambda: N.bpr_loss(torch.zeros(0), torch.zeros(0)), ValueError, "empty"),
    (
        "bpr_loss int",
        lambda: N.bpr_loss(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long)),
        TypeError,
        "pos_score must be a floating-point",
    ),
    (
        "weighted_mean weight",
        lambda: N.weighted_mean(torch.randn(3), torch.ones(4)),
        ValueError,
        "weight must have the shape of values",
    ),
    ("weighted_mean empty", lambda: N.weighted_mean(torch.zeros(0)), ValueError, "empty"),
    (
        "weighted_mean zero weights",
        lambda: N.weighted_mean(torch.randn(3), torch.zeros(3)),
        ValueError,
        r"weight must be non-negative and not all zero, got \[0.0, 0.0, 0.0\]",
    ),
    (
        "weighted_mean negative weight",
        lambda: N.weighted_mean(torch.randn(3), torch.tensor([1.0, -1.0, 1.0])),
        ValueError,
        "weight must be non-negative",
    ),
    (
        "weighted_mean NaN weight",
        lambda: N.weighted_mean(torch.randn(3), torch.tensor([1.0, float("nan"), 1.0])),
        ValueError,
        "weight must be non-negative",
    ),
    (
        "embedding_norm_penalty no rows",
        lambda: N.embedding_norm_penalty(torch.zeros(0, 2)),
        ValueError,
        "batch size B",
    ),
    (
        "info_nce empty",
        lambda: N.info_nce(torch.zeros(0, 4), torch.zeros(0, 4), 0.2),
        ValueError,
        "at least one row",
    ),
    (
        "info_nce float ids",
        lambda: N.info_nce(torch.randn(3, 4), torch.randn(3, 4), 0.2, ids=torch.zeros(3)),
        TypeError,
        "ids must be an integer",
    ),
    (
        "info_nce dtypes",
        lambda: N.info_nce(torch.randn(3, 4), torch.randn(3, 4).double(), 0.2),
        TypeError,
        "one dtype",
    ),
    (
        "symmetric_info_nce empty",
        lambda: N.symmetric_info_nce(torch.zeros(0, 4), torch.zeros(0, 4), 0.2),
        ValueError,
        "at least one row",
    ),
    (
        "info_nce_all_negatives index",
        lambda: N.info_nce_all_negatives(
            torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 9]), 0.2
        ),
        ValueError,
        r"index holds id 9, out of range \[0, 5\)",
    ),
    (
        "score_distribution_kl widths",
        lambda: N.score_distribution_kl(
            torch.randn(3, 4), torch.randn(5, 3), torch.randn(3, 4), torch.randn(5, 4)
        ),
        ValueError,
        "one width",
    ),
    (
        "factored_cross_entropy target range",
        lambda: N.factored_cross_entropy(
            torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 9])
        ),
        ValueError,
        "target holds id 9",
    ),
    (
        "factored_cross_entropy float target",
        lambda: N.factored_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3)),
        TypeError,
        "target must be an integer",
    ),
    (
        "l2_normalize int",
        lambda: N.l2_normalize(torch.ones(3, 4, dtype=torch.long)),
        TypeError,
        "floating-point",
    ),
    ("l2_normalize eps", lambda: N.l2_normalize(torch.ones(3, 4), 0.0), ValueError, "eps"),
    (
        "AttentionFusion width",
        lambda: N.AttentionFusion(4, 2)([torch.randn(5, 3), torch.randn(5, 3)]),
        ValueError,
        r"views\[0\] must have shape \[N, 4\]",
    ),
    (
        "AttentionFusion rows",
        lambda: N.AttentionFusion(4, 2)([torch.randn(5, 4), torch.randn(6, 4)]),
        ValueError,
        r"views\[1\] must have shape \[5, 4\]",
    ),
    (
        "AttentionFusion dtype",
        lambda: N.AttentionFusion(4, 2)([X[:, :4].double()] * 2),
        TypeError,
        "layer.to",
    ),
    (
        "ModalityAttention rows",
        lambda: N.ModalityAttention(4)([torch.randn(5, 4), torch.randn(6, 4)]),
        ValueError,
        r"views\[1\]",
    ),
    (
        "DimensionAttention rows",
        lambda: N.DimensionAttention(4)(torch.randn(5, 4), torch.randn(6, 4)),
        ValueError,
        r"view must have shape \[5, 4\]",
    ),
    (
        "DisentangledEncoder width",
        lambda: N.DisentangledEncoder(4, 3)(torch.randn(5, 3)),
        ValueError,
        r"x must have shape \[N, 4\]",
    ),
    (
        "DisentangledEncoder mean",
        lambda: N.DisentangledEncoder(4, 3)(torch.randn(5, 4), torch.randn(3)),
        ValueError,
        r"mean must have shape \[4\]",
    ),
    (
        "CollaborativeGate rows",
        lambda: N.CollaborativeGate(4)(torch.randn(5, 4), torch.randn(6, 4)),
        ValueError,
        "item_id_emb must have shape",
    ),
    (
        "jensen_shannon_divergence shapes",
        lambda: N.jensen_shannon_divergence([torch.randn(5, 2), torch.randn(6, 2)]),
        ValueError,
        "logits must have one shape",
    ),
    (
        "jensen_shannon_divergence weight",
        lambda: N.jensen_shannon_divergence([torch.randn(5, 2)] * 2, torch.ones(4)),
        ValueError,
        r"weight must have shape \[5\]",
    ),
    (
        "logit_pooling shapes",
        lambda: N.logit_pooling([torch.randn(5), torch.randn(6)]),
        ValueError,
        "logits must have one shape",
    ),
    (
        "orthogonality_loss weight",
        lambda: N.orthogonality_loss(torch.randn(5, 4), torch.randn(5, 4), weight=torch.ones(3)),
        ValueError,
        "weight",
    ),
    (
        "orthogonality_loss empty",
        lambda: N.orthogonality_loss(torch.zeros(0, 4), torch.zeros(0, 4)),
        ValueError,
        "at least one row",
    ),
    (
        "hypergraph_contrastive_loss index",
        lambda: N.hypergraph_contrastive_loss(
            torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 9]), 0.2
        ),
        ValueError,
        "index holds id 9",
    ),
    (
        "HypergraphPropagation dtype",
        lambda: N.HypergraphPropagation(1)(torch.randn(5, 4).double(), torch.rand(5, 3)),
        TypeError,
        "incidence has dtype",
    ),
    (
        "relaxed_dependencies int",
        lambda: N.relaxed_dependencies(torch.ones(3, 2, dtype=torch.long), 0.5, noise=True),
        TypeError,
        "logits must be a floating-point",
    ),
    (
        "VariationalEncoder width",
        lambda: N.VariationalEncoder(4, 3)(torch.randn(5, 3)),
        ValueError,
        r"x must have shape \[N, 4\]",
    ),
    (
        "CLUB y width",
        lambda: N.CLUB(4, 3, 8)(torch.randn(5, 4), torch.randn(5, 4)),
        ValueError,
        r"y must have shape \[5, 3\]",
    ),
    (
        "ConcatCritic dtype",
        lambda: N.ConcatCritic(4, 3, 8)(torch.randn(5, 4).double(), torch.randn(5, 3).double()),
        TypeError,
        "layer's parameters",
    ),
    (
        "neighborhood_affinity range",
        lambda: N.neighborhood_affinity(
            torch.randn(3, 4), torch.randn(3, 4), torch.tensor([[0, 9], [1, 2]]), 3
        ),
        ValueError,
        "sources",
    ),
    (
        "neighborhood_affinity float edges",
        lambda: N.neighborhood_affinity(
            torch.randn(3, 4), torch.randn(3, 4), torch.tensor([[0.0, 1], [1, 2]]), 3
        ),
        TypeError,
        "edge_index must be an integer",
    ),
    (
        "ConfidenceEdgeWeights source length",
        lambda: N.ConfidenceEdgeWeights(5, 2)(torch.rand(3, 2), torch.tensor([0, 1])),
        ValueError,
        "source must have one entry per edge",
    ),
    (
        "ConfidenceEdgeWeights source range",
        lambda: N.ConfidenceEdgeWeights(5, 2)(torch.rand(2, 2), torch.tensor([0, 5])),
        ValueError,
        "source holds id 5",
    ),
    (
        "BehaviorAwareFusion behavior",
        lambda: N.BehaviorAwareFusion(4, 2)([torch.randn(5, 4)] * 2, torch.randn(6, 4)),
        ValueError,
        r"behavior must have shape \[5, 4\]",
    ),
    (
        "cosine_alignment_loss empty",
        lambda: N.cosine_alignment_loss(torch.zeros(0, 4), torch.zeros(0, 4)),
        ValueError,
        "at least one row",
    ),
    (
        "dropout_view int",
        lambda: N.dropout_view(torch.ones(3, 2, dtype=torch.long), 0.5),
        TypeError,
        "x must be a dense floating-point",
    ),
    (
        "modulus_perturbation int",
        lambda: N.modulus_perturbation(torch.ones(3, 2, dtype=torch.long), 0.1),
        TypeError,
        "x must be a dense floating-point",
    ),
    (
        "timestep_embedding dim",
        lambda: N.timestep_embedding(torch.tensor([1]), 0),
        ValueError,
        "dim",
    ),
    (
        "timestep_embedding 2-D",
        lambda: N.timestep_embedding(torch.tensor([[1, 2]]), 4),
        ValueError,
        "t must be a 1-D",
    ),
    (
        "DenoisingMLP t",
        lambda: N.DenoisingMLP(6, (4,), 4)(torch.randn(3, 6), torch.tensor([1, 2])),
        ValueError,
        "t must hold one step per row",
    ),
    (
        "SparsePattern dtype",
        lambda: N.SparsePattern(EDGES, 3, 3).matmul(torch.ones(4), torch.randn(3, 2).double()),
        TypeError,
        "values and x must have one dtype",
    ),
    (
        "skip_connected_graph weight",
        lambda: N.skip_connected_graph(
            (torch.tensor([[0], [1]]), torch.ones(1)),
            (torch.tensor([[0], [1]]), torch.ones(2)),
            0.5,
        ),
        ValueError,
        "frozen must be",
    ),
    (
        "propagate_item_graph layers",
        lambda: N.propagate_item_graph(
            torch.randn(2, 3), (EDGES[:, :1], torch.ones(1)), -1, N.LightConv()
        ),
        ValueError,
        "num_layers",
    ),
    (
        "normalized_adjacency NaN weight",
        lambda: G.normalized_adjacency(EDGES, 3, 3, torch.tensor([1.0, float("nan"), 1, 1])),
        ValueError,
        "edge_weight holds a NaN or inf value, first at edge 1",
    ),
    (
        "normalized_adjacency list weight",
        lambda: G.normalized_adjacency(EDGES, 3, 3, [1.0, 1, 1, 1]),
        TypeError,
        "edge_weight must be a dense torch.Tensor",
    ),
    (
        "item_knn_graph sparse features",
        lambda: G.item_knn_graph(torch.randn(4, 3).to_sparse(), 2),
        TypeError,
        "features must be a dense",
    ),
    (
        "BPRSampler item out of range",
        lambda: BPRSampler(torch.tensor([[0, 1], [0, 3]]), 2, 3, 2),
        ValueError,
        r"item id 3 out of range \[0, 3\)",
    ),
    (
        "BPRSampler float edges",
        lambda: BPRSampler(torch.tensor([[0.0, 1], [0, 1]]), 2, 3, 2),
        ValueError,
        "edge_index must be an integer",
    ),
    (
        "BPRSampler negative users",
        lambda: BPRSampler(torch.tensor([[0, 1], [0, 1]]), -2, 3, 2),
        ValueError,
        "num_users must be a positive int",
    ),
]


@pytest.mark.parametrize(
    "call, error, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_wrong_input_is_an_error_naming_it(call, error, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# --- valid unusual inputs: the dense formula, in value and gradient --------------------------


def test_light_propagation_in_float64_on_a_converted_operator_with_its_gradient() -> None:
    x = _double(6, 4, 0)
    dense = ADJ.to_dense().double()
    op = N.FrozenSparse(ADJ, symmetric=True).to(torch.float64)
    layers = N.LightPropagation(2)
    expected = (x + dense @ x + dense @ dense @ x) / 3
    torch.testing.assert_close(layers(x, op), expected)
    assert gradcheck(lambda t: layers(t, op), (x,))
    assert gradcheck(lambda t: N.LightPropagation(2, symmetric=True)(t, ADJ.double()), (x,))


def test_light_propagation_of_no_edges_and_a_non_contiguous_input() -> None:
    empty = G.normalized_adjacency(torch.empty(2, 0, dtype=torch.long), 1, 1)
    x = torch.randn(4, 2).t()  # [2, 4], not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(N.LightPropagation(2)(x, empty), x / 3)
    dense = ADJ.to_dense()
    y = torch.randn(4, 6).t()
    torch.testing.assert_close(N.LightPropagation(1, mode="sum")(y, ADJ), y + dense @ y)


def test_sparse_rows_matmul_with_int32_rows_and_its_gradient() -> None:
    rows = torch.tensor([2, 0, 2], dtype=torch.int32)
    x = _double(6, 3, 1)
    torch.testing.assert_close(
        N.sparse_rows_matmul(ADJ, rows, x), (ADJ.to_dense().double() @ x)[rows.long()]
    )
    assert gradcheck(lambda t: N.sparse_rows_matmul(ADJ, rows, t), (x,))


def test_info_nce_with_int32_ids_equals_the_repeated_rows() -> None:
    # int32 ids once failed in the grouped form (a scatter of int64 positions into int32)
    table = _double(3, 4, 2)
    ids = torch.tensor([0, 1, 1, 2, 0], dtype=torch.int32)

    def loss(t: torch.Tensor, with_ids: bool) -> torch.Tensor:
        rows = t[ids.long()]
        return N.info_nce(rows, 2 * rows + 1, 0.5, ids=ids if with_ids else None)

    torch.testing.assert_close(loss(table, True), loss(table, False))
    assert gradcheck(lambda t: loss(t, True), (table,))


def test_full_candidate_losses_with_int32_index_equal_the_dense_cross_entropy() -> None:
    a, p = _double(5, 4, 3), _double(5, 4, 4)
    index = torch.tensor([0, 3, 3], dtype=torch.int32)
    logits = F.normalize(a[index.long()], dim=-1) @ F.normalize(p, dim=-1).t() / 0.5
    dense = F.cross_entropy(logits, index.long(), reduction="sum")
    torch.testing.assert_close(N.hypergraph_contrastive_loss(a, p, index, 0.5), dense)
    torch.testing.assert_close(N.info_nce_all_negatives(a, p, index, 0.5), dense / 3)
    assert gradcheck(lambda s, t: N.hypergraph_contrastive_loss(s, t, index, 0.5), (a, p))
    assert gradcheck(lambda s, t: N.info_nce_all_negatives(s, t, index, 0.5), (a, p))


def test_info_nce_of_one_row_is_zero() -> None:
    a, p = _double(1, 4, 5), _double(1, 4, 6)
    assert N.info_nce(a, p, 0.2).item() == pytest.approx(0.0, abs=1e-12)
    assert N.symmetric_info_nce(a, p, 0.2).item() == pytest.approx(0.0, abs=1e-12)


def test_neighbour_contrastive_loss_takes_the_librarys_csr_graphs() -> None:
    # A CSR weight once failed inside (nonzero() has no CSR kernel); the value is the dense one.
    x = _double(4, 3, 7)
    weight = torch.tensor(
        [[0.0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 3], [1, 1, 0, 0]], dtype=torch.float64
    )
    unit = F.normalize(x, dim=-1)
    sim = (unit @ unit.t()).fill_diagonal_(0.0) / 0.5
    dense = -(torch.log((weight * sim.exp()).sum(1)) - torch.logsumexp(sim, 1)).mean()
    torch.testing.assert_close(N.neighbour_contrastive_loss(x, weight.to_sparse_csr(), 0.5), dense)
    torch.testing.assert_close(N.neighbour_contrastive_loss(x, weight, 0.5), dense)


def test_neighbour_contrastive_loss_rejects_a_nan_weight() -> None:
    # NaN passed the "< 0" check and was then dropped as a non-positive entry, silently.
    weight = torch.eye(3)[[1, 2, 0]]
    weight[0, 2] = float("nan")
    with pytest.raises(ValueError, match="non-negative and finite"):
        N.neighbour_contrastive_loss(torch.randn(3, 2), weight, 0.5)


def test_constant_item_graph_keeps_float64_weights_exact() -> None:
    # The weights went through float32 before, although the docstring promises their dtype.
    edge_index = torch.tensor([[0, 1], [1, 0]])
    weight = torch.tensor([0.1 + 1e-12, 0.3], dtype=torch.float64)
    forward, backward = N.constant_item_graph((edge_index, weight), 2)
    assert forward.dtype == backward.dtype == torch.float64
    expected = torch.zeros(2, 2, dtype=torch.float64)
    expected[1, 0], expected[0, 1] = weight[0], weight[1]  # rows of A: (neighbour j, item i)
    assert torch.equal(forward.to_dense(), expected)
    assert torch.equal(backward.to_dense(), expected.t())


def test_layers_convert_to_float64_and_pass_gradcheck() -> None:
    fused, view = _double(5, 4, 8), _double(5, 4, 9)
    torch.manual_seed(0)
    assert gradcheck(N.DimensionAttention(4).double(), (fused, view))
    fusion = N.AttentionFusion(4, 2).double()
    assert gradcheck(lambda s, t: fusion([s, t]), (fused, view))
    assert fusion([fused[:1], view[:1]]).shape == (1, 4)  # one node
    gate = N.CollaborativeGate(4).double()
    expected = fused * torch.sigmoid(view @ gate.linear.weight.t() + gate.linear.bias)
    torch.testing.assert_close(gate(fused, view), expected)
    behaviour = N.BehaviorAwareFusion(4, 2).double()
    assert gradcheck(lambda s, t: behaviour([s, t], s + t), (fused, view))


def test_disentangled_encoder_centred_equation() -> None:
    encoder = N.DisentangledEncoder(4, 3).double()
    x, mean = _double(5, 4, 10), torch.randn(4, dtype=torch.float64)
    common, private = encoder(x, mean)
    z = (x - mean) @ encoder.projection.weight.t()  # Z = W_1 (X - 1 mu^T)
    torch.testing.assert_close(common, encoder.common(z))
    torch.testing.assert_close(private, encoder.private(z))


def test_kl_to_standard_normal_equals_torch_distributions() -> None:
    mean, log_var = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    posterior = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    prior = torch.distributions.Normal(0.0, 1.0)
    expected = torch.distributions.kl_divergence(posterior, prior).sum(-1).mean()
    torch.testing.assert_close(N.kl_to_standard_normal(mean, log_var), expected)


def test_affinities_and_edge_weights_with_int32_indices() -> None:
    source, target = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    edges = torch.tensor([[0, 1, 2, 0], [0, 0, 1, 1]], dtype=torch.int32)
    logits = (source[edges[0].long()] * target[edges[1].long()]).sum(-1)
    expected = torch.cat([logits[:2].softmax(0), logits[2:].softmax(0)])
    torch.testing.assert_close(N.neighborhood_affinity(source, target, edges, 2), expected)
    weights = N.ConfidenceEdgeWeights(3, 2).double()
    affinity = torch.rand(4, 2, dtype=torch.float64)
    sender = torch.tensor([0, 2, 1, 2], dtype=torch.int32)
    expected = (torch.sigmoid(weights.confidence[sender.long()]) * affinity).amax(-1)
    torch.testing.assert_close(weights(affinity, sender), expected)


# --- parameters: reset_parameters re-initialises every one ------------------------------------

LAYERS = {
    "AttentionFusion": lambda: N.AttentionFusion(4, 2),
    "DimensionAttention": lambda: N.DimensionAttention(4),
    "ModalityAttention": lambda: N.ModalityAttention(4),
    "BehaviorAwareFusion": lambda: N.BehaviorAwareFusion(4, 2),
    "CollaborativeGate": lambda: N.CollaborativeGate(4),
    "DisentangledEncoder": lambda: N.DisentangledEncoder(4, 3),
    "VariationalEncoder": lambda: N.VariationalEncoder(4, 3),
    "CLUB": lambda: N.CLUB(4, 3, 8),
    "ConcatCritic": lambda: N.ConcatCritic(4, 3, 8),
    "NCECLUB": lambda: N.NCECLUB(4, 3, 8),
    "ConfidenceEdgeWeights": lambda: N.ConfidenceEdgeWeights(5, 2),
    "DenoisingMLP": lambda: N.DenoisingMLP(6, (4,), 4),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_reset_parameters_reinitialises_every_parameter_and_repr_names_the_layer(name) -> None:
    layer = LAYERS[name]()
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(0.123)
    layer.reset_parameters()
    stale = [n for n, p in layer.named_parameters() if bool((p == 0.123).all())]
    assert not stale
    assert repr(layer).startswith(name)
