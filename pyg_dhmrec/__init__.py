"""pyg-dhmrec: a PyTorch Geometric library for multimodal recommendation."""

__version__ = "0.1.0"

from pyg_dhmrec.api import build_model, fit, make_config, train

__all__ = ["build_model", "fit", "make_config", "train"]
