"""Fold BatchNorm into the preceding Conv/Linear, as every deployment does before quantizing.

Pairs are found by running the model once with hooks: a BatchNorm whose input tensor is the very
output tensor of a Conv/Linear follows that layer. This needs no tracing, so it works for any
nn.Module, whatever its forward does.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.overrides import TorchFunctionMode

from qnnrepair.hooks import on_forward

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_WEIGHTED = (nn.Conv2d, nn.Linear)


def find_batchnorm_pairs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """(layer, batchnorm) names, where the batchnorm directly consumes the layer's output."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []

    def remember(name: str, output: torch.Tensor) -> None:
        produced[id(output)] = (name, output)  # keep the tensor alive so ids stay unique

    def match(name: str, x: torch.Tensor) -> None:
        source = produced.get(id(x))
        if source is not None and source[1] is x:
            pairs.append((source[0], name))

    modules = dict(model.named_modules())
    weighted = {n: m for n, m in modules.items() if isinstance(m, _WEIGHTED)}
    batchnorms = {n: m for n, m in modules.items() if isinstance(m, _BATCHNORMS)}
    with on_forward(weighted, remember, "output"), on_forward(batchnorms, match, "input"), \
            torch.no_grad():
        model(example_input)
    return list(dict.fromkeys(pairs))


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor
                   ) -> tuple[nn.Module, list[tuple[str, str]]]:
    """A copy of `model` (eval mode), each foldable BatchNorm folded and replaced by what is
    left of it (see `folded_away`)."""
    folded = copy.deepcopy(model).eval()
    pairs = find_batchnorm_pairs(folded, example_input)
    for layer_name, bn_name in pairs:
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        fuse = fuse_conv_bn_eval if isinstance(layer, nn.Conv2d) else fuse_linear_bn_eval
        set_module(folded, layer_name, fuse(layer, bn))
        set_module(folded, bn_name, folded_away(bn))
    return folded, pairs


def apply_fold_structure(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """Give a fresh model the module structure of a folded one (for loading its state)."""
    for layer_name, bn_name in pairs:
        layer = model.get_submodule(layer_name)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
        set_module(model, bn_name, folded_away(model.get_submodule(bn_name)))
    return model


def folded_away(bn: nn.Module) -> nn.Module:
    """What replaces a folded BatchNorm: Identity, or, for a subclass with a forward of its own
    (timm's BatchNormAct2d applies its activation there), that forward with its normalization
    made the identity."""
    if type(bn).forward is _STOCK_FORWARD:
        return nn.Identity()
    return WithoutNormalization(bn)


_STOCK_FORWARD = nn.BatchNorm2d.forward  # the same function for BatchNorm1d


class WithoutNormalization(nn.Module):
    """A BatchNorm subclass whose own forward still runs, its F.batch_norm returning its input
    (the normalization lives in the preceding layer's folded weights)."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _SkipBatchNorm():
            return self.bn(x)


class _SkipBatchNorm(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.batch_norm:
            return args[0] if args else kwargs["input"]
        return func(*args, **(kwargs or {}))


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
