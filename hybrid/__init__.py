"""hybrid: recursive reasoning models (TRM, HRM) in plain PyTorch, pure and on top of Hugging Face models."""

__version__ = "0.1.0"
