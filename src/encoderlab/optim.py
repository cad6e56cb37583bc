"""Optimizers of encoderlab's own (conf/optimizer/): LazyAdamW, AdamW that updates only the embedding rows a
batch used.

A batch of 8 short sentences uses ~100 of the 30,522 rows of a BERT vocabulary's word embedding, yet a
dense AdamW step reads and writes all of them (the gradient, both moments and the weights: ~190 MB for
MiniLM's 30522 x 384 table), and the dense gradient is zeroed and norm-clipped in full every step. On a CPU
that is a third of a short-sentence step. With LazyAdamW the model's input embedding (`input_embeddings()`,
encoderlab/models/capabilities.py) produces sparse gradients (`nn.Embedding(sparse=True)`) and its update
touches only the rows in the batch; every other parameter gets torch's AdamW, fused where it is.

Semantics of the rows (the "lazy Adam" of TensorFlow Addons and of torch.optim.SparseAdam, with AdamW's
decoupled weight decay): a row in the batch gets exactly AdamW's update, its moments first decayed and then
fed the row's gradient, bias-corrected with the optimizer's global step. A row not in the batch is left as
it is: its moments do not decay, momentum does not move it and weight decay does not shrink it until the
next batch that uses it. Dense AdamW would keep moving a row for a few steps after its last use (momentum,
beta1 = 0.9) and shrink every row every step; lazily, rarely used words move less. docs/speed.md shows the
loss curves and accuracies side by side. Under DDP/FSDP the embedding stays dense (NCCL cannot all-reduce
sparse gradients) and LazyAdamW is exactly AdamW.
"""

from __future__ import annotations

import math

import torch


class LazyAdamW(torch.optim.AdamW):
    """torch.optim.AdamW for dense gradients; a sparse gradient updates only its rows (see the module's
    docstring). Same arguments and state (step, exp_avg, exp_avg_sq per parameter), so checkpoints move
    between the two; amsgrad is not supported for sparse gradients."""

    sparse_gradients = True  # SequenceClassifier gives the input embedding sparse gradients for it

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [
            (group, p)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None and p.grad.is_sparse
        ]
        hidden = [(p, p.grad) for _, p in sparse]
        for p, _ in hidden:  # AdamW skips parameters without a gradient
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        for group, p in sparse:
            self._lazy_update(group, p)
        return loss

    def _lazy_update(self, group: dict, p: torch.Tensor) -> None:
        if group["amsgrad"]:
            raise ValueError(
                "LazyAdamW: amsgrad=true is not supported for sparse gradients (the input embedding); "
                "use optimizer.amsgrad=false or optimizer=adamw."
            )
        grad = p.grad.coalesce()  # one row per index, duplicates summed
        rows, g = grad.indices()[0], grad.values()  # (n,), (n, C)
        if group["maximize"]:
            g = -g
        state = self.state[p]
        if not state:  # the layout torch's AdamW uses, so state dicts are interchangeable
            # on the host, as AdamW keeps it unfused: reading it each step costs no device sync
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = (float(b) for b in group["betas"])
        lr, eps, decay = float(group["lr"]), group["eps"], group["weight_decay"]
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)  # (n, C)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        weights = p.index_select(0, rows)
        if decay:
            weights.mul_(1 - lr * decay)
        weights.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
        p.index_copy_(0, rows, weights)
