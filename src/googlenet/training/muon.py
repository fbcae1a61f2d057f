"""Muon for convolutions: torch.optim.Muon orthogonalises 2-D momentum, and a convolution's (out, in, kh, kw)
weight is the (out, in x kh x kw) matrix it multiplies its input patches by. Each weight is handed to Muon as
that matrix, a view of the weight's own memory, so torch's update lands in the weight itself; the gradient is
flattened the same way before every step.

Which columns come first does not matter: orthogonalising a matrix commutes with permuting its columns, so a
channels-last weight is flattened in its memory order, (out, kh, kw, in), without a copy.

`Optimizers` steps Muon and SGD (for what Muon cannot take) as one optimizer: one state dict, one list of
parameter groups for the schedule to set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def _inner_order(weight: Tensor) -> list[int]:
    """The dimensions after the first, outermost in memory first."""
    strides = weight.stride()
    return sorted(range(1, weight.dim()), key=lambda d: -strides[d])


def matrix_view(weight: Tensor) -> Tensor | None:
    """``weight`` as an (out, fan-in) matrix sharing its memory, or None when its memory order does not allow
    one (dim 0 must be the outermost) or it has fewer than 2 dimensions."""
    if weight.dim() < 2:
        return None
    permuted = weight.detach().permute(0, *_inner_order(weight))
    if not permuted.is_contiguous():
        return None
    return permuted.view(weight.shape[0], -1)


def as_matrix(tensor: Tensor, like: Tensor) -> Tensor:
    """A gradient flattened in the same column order as its weight's `matrix_view` (copied if its memory
    order differs from the weight's)."""
    return tensor.permute(0, *_inner_order(like)).reshape(like.shape[0], -1)


class MatrixMuon(torch.optim.Muon):
    """torch.optim.Muon over weights of any rank >= 2, each taken as its `matrix_view`. Parameter groups are
    dicts as for any torch optimizer; every weight must have a matrix view (`matrix_view` is not None)."""

    def __init__(self, groups: list[dict[str, Any]], **defaults: Any) -> None:
        self.weights: list[nn.Parameter] = []
        self.matrices: list[Tensor] = []
        matrix_groups = []
        for group in groups:
            views = []
            for weight in group["params"]:
                view = matrix_view(weight)
                if view is None:
                    raise ValueError(f"Muon cannot take a weight of shape {tuple(weight.shape)} as a matrix")
                self.weights.append(weight)
                self.matrices.append(view)
                views.append(view)
            matrix_groups.append({**group, "params": views})
        super().__init__(matrix_groups, **defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for weight, matrix in zip(self.weights, self.matrices, strict=True):
            matrix.grad = None if weight.grad is None else as_matrix(weight.grad, weight)
        try:
            return super().step(closure)  # type: ignore[no-untyped-call]
        finally:
            for matrix in self.matrices:
                matrix.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The weights' own gradients: torch's zero_grad would clear only the matrix views' (never set)."""
        for weight in self.weights:
            if set_to_none:
                weight.grad = None
            elif weight.grad is not None:
                weight.grad.zero_()


class Optimizers:
    """Several torch optimizers over disjoint parameters, stepped, zeroed, saved and restored as one. The
    parameter groups are all of theirs in order, so the learning-rate schedule sets them all."""

    def __init__(self, parts: Iterable[torch.optim.Optimizer]) -> None:
        self.parts = list(parts)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self.parts for group in part.param_groups]

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        parts = saved.get("parts")
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ValueError("the saved optimizer state is not this optimizer's (optim.name differs)")
        for part, state in zip(self.parts, parts, strict=True):
            part.load_state_dict(state)
