from pyg_dhmrec.nn.disentangle import (
    CollaborativeGate,
    DisentangledEncoder,
    jensen_shannon_divergence,
    logit_pooling,
    orthogonality_loss,
)
from pyg_dhmrec.nn.fusion import AttentionFusion, DimensionAttention
from pyg_dhmrec.nn.losses import (
    bpr_loss,
    embedding_norm_penalty,
    info_nce,
    score_distribution_kl,
    squared_l2_penalty,
)
from pyg_dhmrec.nn.propagation import (
    LightConv,
    LightPropagation,
    constant_spmm,
    symmetric_spmm,
)

__all__ = [
    "AttentionFusion",
    "CollaborativeGate",
    "DimensionAttention",
    "DisentangledEncoder",
    "jensen_shannon_divergence",
    "logit_pooling",
    "orthogonality_loss",
    "score_distribution_kl",
    "LightConv",
    "LightPropagation",
    "symmetric_spmm",
    "bpr_loss",
    "constant_spmm",
    "embedding_norm_penalty",
    "info_nce",
    "squared_l2_penalty",
]
