"""Optimisers of the official TRM/HRM training: AdamATan2 (dense), SparseSignSGD (puzzle table), lr schedule, EMA."""

from hybrid.optim.adam_atan2 import AdamATan2
from hybrid.optim.ema import EMA
from hybrid.optim.schedule import lr_at
from hybrid.optim.sparse_sign_sgd import SparseSignSGD

__all__ = ["AdamATan2", "EMA", "SparseSignSGD", "lr_at"]
