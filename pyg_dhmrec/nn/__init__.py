from pyg_dhmrec.nn.behavior_fusion import BehaviorAwareFusion, FusionParts
from pyg_dhmrec.nn.bootstrap import cosine_alignment_loss, dropout_view
from pyg_dhmrec.nn.chunked_contrastive import chunked_info_nce, neighbour_contrastive_loss
from pyg_dhmrec.nn.diffusion import DenoisingMLP, GaussianDiffusion, timestep_embedding
from pyg_dhmrec.nn.disentangle import (
    CollaborativeGate,
    DisentangledEncoder,
    centred_projection,
    jensen_shannon_divergence,
    logit_pooling,
    orthogonality_loss,
)
from pyg_dhmrec.nn.edge_refinement import ConfidenceEdgeWeights
from pyg_dhmrec.nn.fusion import AttentionFusion, DimensionAttention, ModalityAttention
from pyg_dhmrec.nn.graph_learning import (
    ItemGraph,
    LearnedKNNGraph,
    constant_item_graph,
    cosine_knn_edges,
    propagate_item_graph,
    skip_connected_graph,
)
from pyg_dhmrec.nn.hypergraph import (
    HypergraphPropagation,
    hypergraph_contrastive_loss,
    relaxed_dependencies,
)
from pyg_dhmrec.nn.information import (
    CLUB,
    NCECLUB,
    ConcatCritic,
    VariationalEncoder,
    kl_to_standard_normal,
)
from pyg_dhmrec.nn.losses import (
    anchor_info_nce,
    bpr_loss,
    embedding_norm_penalty,
    factored_cross_entropy,
    info_nce,
    info_nce_all_negatives,
    score_distribution_kl,
    squared_l2_penalty,
    symmetric_bernoulli_kl,
    symmetric_info_nce,
    weighted_mean,
)
from pyg_dhmrec.nn.normalize import l2_normalize
from pyg_dhmrec.nn.perturbation import (
    ModulusPerturbation,
    modulus_perturbation,
)
from pyg_dhmrec.nn.propagation import (
    FrozenSparse,
    LightConv,
    LightPropagation,
    constant_spmm,
    item_seeded_propagation,
    sparse_rows_matmul,
    symmetric_spmm,
)
from pyg_dhmrec.nn.routing import PrototypeRouting, neighborhood_affinity
from pyg_dhmrec.nn.sparse_pattern import SparsePattern

__all__ = [
    "DenoisingMLP",
    "GaussianDiffusion",
    "timestep_embedding",
    "ConfidenceEdgeWeights",
    "PrototypeRouting",
    "neighborhood_affinity",
    "SparsePattern",
    "l2_normalize",
    "chunked_info_nce",
    "anchor_info_nce",
    "ModulusPerturbation",
    "modulus_perturbation",
    "BehaviorAwareFusion",
    "FusionParts",
    "cosine_alignment_loss",
    "dropout_view",
    "ItemGraph",
    "LearnedKNNGraph",
    "constant_item_graph",
    "propagate_item_graph",
    "skip_connected_graph",
    "cosine_knn_edges",
    "HypergraphPropagation",
    "hypergraph_contrastive_loss",
    "relaxed_dependencies",
    "AttentionFusion",
    "ModalityAttention",
    "CLUB",
    "ConcatCritic",
    "NCECLUB",
    "CollaborativeGate",
    "DimensionAttention",
    "DisentangledEncoder",
    "centred_projection",
    "jensen_shannon_divergence",
    "logit_pooling",
    "orthogonality_loss",
    "score_distribution_kl",
    "FrozenSparse",
    "LightConv",
    "LightPropagation",
    "item_seeded_propagation",
    "sparse_rows_matmul",
    "symmetric_spmm",
    "bpr_loss",
    "constant_spmm",
    "embedding_norm_penalty",
    "factored_cross_entropy",
    "info_nce",
    "neighbour_contrastive_loss",
    "info_nce_all_negatives",
    "l2_normalize",
    "kl_to_standard_normal",
    "squared_l2_penalty",
    "symmetric_bernoulli_kl",
    "symmetric_info_nce",
    "weighted_mean",
    "VariationalEncoder",
]
