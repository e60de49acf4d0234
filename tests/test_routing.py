"""GRCN's pieces: neighbourhood-normalised affinities, prototype routing, confidence weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import scatter

from pyg_dhmrec.nn import (
    ConfidenceEdgeWeights,
    PrototypeRouting,
    SparsePattern,
    neighborhood_affinity,
)


def test_affinity_is_a_softmax_over_each_targets_in_edges() -> None:
    x_source = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x_target = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # Target 0 <- sources 0, 1; target 1 <- sources 1, 2.
    edge_index = torch.tensor([[0, 1, 1, 2], [0, 0, 1, 1]])
    a = neighborhood_affinity(x_source, x_target, edge_index, 2)
    e2 = math.exp(2.0)
    expected = torch.tensor([e2 / (e2 + 1), 1 / (e2 + 1), 0.5, 0.5])
    torch.testing.assert_close(a, expected)


def test_affinity_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError, match="one width"):
        neighborhood_affinity(torch.ones(2, 3), torch.ones(2, 4), torch.tensor([[0], [0]]), 2)


def test_routing_hand_computed_step() -> None:
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # User 0 rated both items; user 1 rated none.
    edges = torch.tensor([[0, 0], [0, 1]])
    out = PrototypeRouting(1)(prototypes, items, edges)
    e = math.e
    pulled = torch.tensor([e / (e + 1), 1 / (e + 1)])
    torch.testing.assert_close(out[0], F.normalize(torch.tensor([1.0, 0.0]) + pulled, dim=0))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 1.0]))  # no items: normalised only


def test_routing_moves_prototypes_towards_their_items() -> None:
    g = torch.Generator().manual_seed(0)
    items = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    prototypes = torch.randn(3, 4, generator=g)
    edges = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 2, 3, 4]])
    centre = torch.stack([items[[0, 1]].mean(0), items[[2, 3]].mean(0), items[4]])
    before = F.cosine_similarity(prototypes, centre)
    after = F.cosine_similarity(PrototypeRouting(5)(prototypes, items, edges), centre)
    assert (after > before).all()
    torch.testing.assert_close(
        PrototypeRouting(3)(prototypes, items, edges).norm(dim=-1), torch.ones(3)
    )


def test_routing_rejects_a_negative_iteration_count() -> None:
    with pytest.raises(ValueError, match="num_routing"):
        PrototypeRouting(-1)


def test_confidence_weights_hand_values_and_range() -> None:
    weights = ConfidenceEdgeWeights(num_nodes=3, num_modalities=2)
    with torch.no_grad():
        weights.confidence.copy_(torch.tensor([[0.0, 0.0], [10.0, -10.0], [-10.0, -10.0]]))
    affinity = torch.tensor([[0.2, 0.8], [0.6, 1.0], [1.0, 1.0]])
    w = weights(affinity, torch.tensor([0, 1, 2]))
    expected = torch.stack(
        [
            torch.tensor(0.5 * 0.8),  # max(sig(0) * 0.2, sig(0) * 0.8)
            torch.sigmoid(torch.tensor(10.0)) * 0.6,  # the confident modality wins
            torch.sigmoid(torch.tensor(-10.0)),  # an unconfident sender is pruned softly
        ]
    )
    torch.testing.assert_close(w, expected)
    assert ((w >= 0) & (w <= 1)).all()


def test_confidence_weights_relu_form_is_the_codes_formula() -> None:
    """``activation="relu"``: relu(max_m c_m a_m); weights may exceed 1 and a sender whose
    confidences are all negative is pruned to exactly 0."""
    weights = ConfidenceEdgeWeights(num_nodes=3, num_modalities=2, activation="relu")
    with torch.no_grad():
        weights.confidence.copy_(torch.tensor([[0.5, 3.0], [2.0, -1.0], [-1.0, -2.0]]))
    affinity = torch.tensor([[0.2, 0.8], [0.6, 1.0], [1.0, 0.5]])
    w = weights(affinity, torch.tensor([0, 1, 2]))
    # max(0.5 * 0.2, 3 * 0.8) = 2.4; max(2 * 0.6, -1 * 1) = 1.2; relu(max(-1, -1)) = 0
    torch.testing.assert_close(w, torch.tensor([2.4, 1.2, 0.0]))
    with pytest.raises(ValueError, match="activation must be one of"):
        ConfidenceEdgeWeights(3, 2, activation="tanh")


def test_confidence_weights_reject_a_wrong_modality_count() -> None:
    with pytest.raises(ValueError, match=r"shape \[E, 2\]"):
        ConfidenceEdgeWeights(3, 2)(torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 1 modality"):
        ConfidenceEdgeWeights(3, 0)


def test_routing_on_a_sparse_pattern_equals_the_edge_wise_formula() -> None:
    """The first implementation (per-edge gathers and a scatter sum) is the reference, in value
    and gradient; an edge index and a prebuilt pattern give the same result."""
    g = torch.Generator().manual_seed(4)
    items = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
    prototypes = torch.randn(5, 4, generator=g, dtype=torch.float64)
    edges = torch.tensor([[0, 0, 1, 1, 2, 4, 4, 4], [0, 1, 2, 3, 4, 0, 3, 5]])

    def reference(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = F.normalize(p, dim=-1)
        for _ in range(3):
            w = neighborhood_affinity(x, out, edges.flip(0), 5)
            out = F.normalize(out + scatter(w.unsqueeze(-1) * x[edges[1]], edges[0], 0, 5), dim=-1)
        return out

    p1, x1 = prototypes.clone().requires_grad_(), items.clone().requires_grad_()
    p2, x2 = prototypes.clone().requires_grad_(), items.clone().requires_grad_()
    expected = reference(p1, x1)
    got = PrototypeRouting(3)(p2, x2, SparsePattern(edges, 5, 6))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(PrototypeRouting(3)(prototypes, items, edges), expected.detach())
    upstream = torch.randn(5, 4, generator=g, dtype=torch.float64)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    torch.testing.assert_close(p2.grad, p1.grad)
    torch.testing.assert_close(x2.grad, x1.grad)
