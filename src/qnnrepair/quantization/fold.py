"""Fold BatchNorm into the preceding Conv/Linear, as every deployment does before quantizing.

Pairs are found by running the model once with hooks: a BatchNorm whose input tensor is the very
output tensor of a Conv/Linear follows that layer. This needs no tracing, so it works for any
nn.Module, whatever its forward does.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

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
    """A copy of `model` (eval mode), each foldable BatchNorm folded and replaced by Identity."""
    folded = copy.deepcopy(model).eval()
    pairs = find_batchnorm_pairs(folded, example_input)
    for layer_name, bn_name in pairs:
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        fuse = fuse_conv_bn_eval if isinstance(layer, nn.Conv2d) else fuse_linear_bn_eval
        set_module(folded, layer_name, fuse(layer, bn))
        set_module(folded, bn_name, nn.Identity())
    return folded, pairs


def apply_fold_structure(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """Give a fresh model the module structure of a folded one (for loading its state)."""
    for layer_name, bn_name in pairs:
        layer = model.get_submodule(layer_name)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
        set_module(model, bn_name, nn.Identity())
    return model


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
