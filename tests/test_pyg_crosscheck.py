"""This library's building blocks against PyTorch Geometric's own on the same inputs."""

from __future__ import annotations

import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN as PyGLightGCN
from toy_graphs import toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.models import LightGCN


def _bipartite(edge_index: torch.Tensor, num_users: int) -> torch.Tensor:
    """Users then items as one node set, both directions."""
    users, items = edge_index[0], edge_index[1] + num_users
    return torch.stack([torch.cat([users, items]), torch.cat([items, users])])


def test_normalized_adjacency_equals_gcn_norm() -> None:
    data = toy_graph()
    num_users, num_items = 40, 30
    full = _bipartite(data[RATES].edge_index, num_users)
    n = num_users + num_items
    edge_index, weight = gcn_norm(full, None, n, add_self_loops=False)
    expected = torch.zeros(n, n)
    expected[edge_index[0], edge_index[1]] = weight
    ours = normalized_adjacency(data[RATES].edge_index, num_users, num_items).to_dense()
    torch.testing.assert_close(ours, expected)


def test_lightgcn_equals_pyg_lightgcn_on_the_same_weights() -> None:
    data = toy_graph()
    num_users, num_items, layers = 40, 30, 3
    torch.manual_seed(0)
    ours = LightGCN(data, embedding_dim=8, num_ui_layers=layers)
    pyg = PyGLightGCN(num_users + num_items, embedding_dim=8, num_layers=layers)
    with torch.no_grad():
        pyg.embedding.weight.copy_(
            torch.cat([ours.user_embedding.weight, ours.item_embedding.weight])
        )
    expected = pyg.get_embedding(_bipartite(data[RATES].edge_index, num_users))
    out = ours()
    torch.testing.assert_close(out.user, expected[:num_users])
    torch.testing.assert_close(out.item, expected[num_users:])
