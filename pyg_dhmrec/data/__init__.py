from pyg_dhmrec.data.cooccurrence import cooccurrence_edges, resample_to_k_neighbours
from pyg_dhmrec.data.dataset import (
    RATES,
    REV_RATES,
    AmazonDataset,
    MMRecDataset,
    SyntheticDataset,
    item_features,
    load_dataset,
)
from pyg_dhmrec.data.graph import (
    DegreeSensitiveEdgeDropout,
    item_knn_graph,
    knn_adjacency,
    normalized_adjacency,
)
from pyg_dhmrec.data.item_cooccurrence import item_cooccurrence_edges, item_cooccurrence_graph
from pyg_dhmrec.data.mmrec_format import DataFormatError, read_feature_file, read_inter_file
from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler
from pyg_dhmrec.data.transforms import AddItemKNNGraphs, AddUserCooccurrenceGraph

__all__ = [
    "item_cooccurrence_edges",
    "item_cooccurrence_graph",
    "AmazonDataset",
    "AddItemKNNGraphs",
    "AddUserCooccurrenceGraph",
    "cooccurrence_edges",
    "resample_to_k_neighbours",
    "RATES",
    "REV_RATES",
    "BPRBatch",
    "BPRSampler",
    "DataFormatError",
    "DegreeSensitiveEdgeDropout",
    "MMRecDataset",
    "SyntheticDataset",
    "item_features",
    "item_knn_graph",
    "knn_adjacency",
    "load_dataset",
    "normalized_adjacency",
    "read_feature_file",
    "read_inter_file",
]
