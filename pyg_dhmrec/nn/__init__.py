from pyg_dhmrec.nn.losses import bpr_loss, embedding_norm_penalty, squared_l2_penalty
from pyg_dhmrec.nn.propagation import LightConv, LightPropagation, symmetric_spmm

__all__ = [
    "LightConv",
    "LightPropagation",
    "symmetric_spmm",
    "bpr_loss",
    "embedding_norm_penalty",
    "squared_l2_penalty",
]
