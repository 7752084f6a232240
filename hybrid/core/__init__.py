"""The recursive core: layers, recursion (TRM / HRM / single-z), the ACT wrapper and the losses. Imports nothing else
from hybrid."""

from hybrid.core.act import ACT, ACTCarry, Reasoner, ReasonerOutput
from hybrid.core.layers import (
    Attention,
    Block,
    CastedEmbedding,
    CastedLinear,
    CastedSparseEmbedding,
    ReasoningModule,
    RotaryEmbedding,
    SwiGLU,
    TokenMixer,
    rms_norm,
    trunc_normal_init_,
)
from hybrid.core.losses import ACTLoss, stablemax_cross_entropy, softmax_cross_entropy
from hybrid.core.recursion import HRMCore, SingleZCore, TRMCore

__all__ = [
    "ACT",
    "ACTCarry",
    "ACTLoss",
    "Attention",
    "Block",
    "CastedEmbedding",
    "CastedLinear",
    "CastedSparseEmbedding",
    "HRMCore",
    "ReasoningModule",
    "Reasoner",
    "ReasonerOutput",
    "RotaryEmbedding",
    "SingleZCore",
    "SwiGLU",
    "TRMCore",
    "TokenMixer",
    "rms_norm",
    "softmax_cross_entropy",
    "stablemax_cross_entropy",
    "trunc_normal_init_",
]
