"""pyg-dhmrec: a PyTorch Geometric library for multimodal recommendation."""

__version__ = "0.1.0"
