"""SignSGD with decoupled decay for the sparse puzzle-embedding table (official models/sparse_embedding.py,
`CastedSparseEmbeddingSignSGD_Distributed`).

The embedding gathers the batch's rows into a buffer `local_weights` [B, d] that receives the gradient, and remembers
their ids in `local_ids` [B]. The table `weights` [N, d] itself never gets a gradient. Per step:

    ids, g   <- all-gather (local_ids, local_weights.grad) over ranks     (a gather, not a reduce)
    g_sum[i] <- sum of g over the rows whose id is i                       (duplicate ids add up)
    W[i]     <- W[i] * (1 - lr*wd) - lr * sign(g_sum[i])                   (only for ids present)

Rows not in the global batch are neither decayed nor moved. Every rank applies the same update to the same gathered
data, so the tables stay identical without a broadcast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from hybrid.core.layers import CastedSparseEmbedding


class SparseSignSGD(torch.optim.Optimizer):
    """Sparse SignSGD over `embedding.weights`, driven by `embedding.local_weights.grad` and `embedding.local_ids`.

    `embedding` is any module with those three tensors (`hybrid.core.layers.CastedSparseEmbedding`). Every rank must
    hold the same local batch size, since ids and gradients are all-gathered into one tensor. Built with lr = 0: the
    training loop writes each step's lr into `param_groups[0]["lr"]`. `state_dict()` holds lr and weight_decay.
    """

    def __init__(self, embedding: CastedSparseEmbedding, lr: float = 0.0, weight_decay: float = 0.1):
        if lr < 0.0:
            raise ValueError(f"SparseSignSGD: lr must be >= 0, got {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"SparseSignSGD: weight_decay must be >= 0, got {weight_decay}")
        for name in ("weights", "local_weights", "local_ids"):
            if not isinstance(getattr(embedding, name, None), Tensor):
                raise ValueError(f"SparseSignSGD: {type(embedding).__name__} has no tensor attribute {name!r}; "
                                 "expected a sparse embedding with weights [N, d], local_weights [B, d], local_ids [B]")
        self.embedding = embedding
        super().__init__([embedding.weights], dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad = self.embedding.local_weights.grad
        if grad is None:
            raise RuntimeError("SparseSignSGD.step: embedding.local_weights.grad is None; "
                               "call backward() on a loss that used the embedding in training mode first")
        ids = self.embedding.local_ids
        if ids.shape != grad.shape[:1]:
            raise ValueError(f"SparseSignSGD.step: local_ids has shape {tuple(ids.shape)} but local_weights.grad has "
                             f"shape {tuple(grad.shape)}; expected one id per gradient row")

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids, grad = _all_gather(ids), _all_gather(grad)

        weights = self.embedding.weights
        group = self.param_groups[0]
        # Duplicate ids are summed without torch.unique, whose data-dependent output size costs a host sync on CUDA:
        # a stable sort keeps each id's rows in batch order (so the sums add in the same order as an index_add over
        # the batch), and every row of a run of equal ids is numbered with that run's index.
        sorted_ids, order = torch.sort(ids, stable=True)
        new_run = torch.ones_like(sorted_ids, dtype=torch.bool)
        new_run[1:] = sorted_ids[1:] != sorted_ids[:-1]
        run = torch.cumsum(new_run, 0) - 1
        g_sum = torch.zeros(len(ids), grad.shape[1], dtype=weights.dtype, device=weights.device)
        g_sum.index_add_(0, run, grad[order].to(weights.dtype))

        # Rows of the same id compute the same new value, so writing all of them is the same as writing one.
        rows = weights[sorted_ids]
        rows.mul_(1.0 - group["lr"] * group["weight_decay"]).add_(torch.sign(g_sum[run]), alpha=-group["lr"])
        weights[sorted_ids] = rows
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        grad = self.embedding.local_weights.grad
        if set_to_none:
            self.embedding.local_weights.grad = None
        elif grad is not None:
            grad.zero_()


def _all_gather(local: Tensor) -> Tensor:
    """Concatenate `local` from every rank along dim 0, in rank order."""
    out = local.new_empty((dist.get_world_size() * local.shape[0], *local.shape[1:]))
    dist.all_gather_into_tensor(out, local.contiguous())
    return out
