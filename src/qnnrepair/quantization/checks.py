"""What the quantizer checks about a user's model, before and after quantizing it.

Before: the model returns one tensor, a row per image; every weight of a convolution or linear
call lives in an nn.Conv2d / nn.Linear (kernels.weighted_calls_outside); each of those runs once
per forward pass.

After (the self-check): the quantized model, with every layer computing in float (its float
weight, its input not rounded; `reference_path`), must reproduce the user's own model on a
calibration batch within `RTOL` of the largest output. This runs the quantized model's very
structure (the same kernels, geometry and wrappers), so a layer built with the wrong padding,
a lost forward or a bad fold is caught here, named, before any file is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.hooks import capture

# Folding BatchNorm changes float32 rounding; a wrong geometry or forward changes far more.
RTOL = 1e-3
CHECK_IMAGES = 16


def check_output(model: nn.Module, example: torch.Tensor) -> None:
    """The forward returns one tensor with a row per image (a classifier's logits)."""
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as err:  # noqa: BLE001 (whatever the user's forward raises)
        reason = (str(err).strip().splitlines() or [""])[0][:160]
        raise QnnRepairError(
            f"the model fails on images of shape {tuple(example.shape)} "
            f"({type(err).__name__}: {reason}): check that the data fits the model (size, "
            "channels; --resize / --crop for image folders)") from None
    check_logits(out, len(example))


def check_logits(out, n_images: int) -> None:
    """`out`, a model's output on `n_images` images, is one tensor with a row per image."""
    if not isinstance(out, torch.Tensor):
        raise QnnRepairError(
            f"the model returns a {type(out).__name__}, not a tensor of logits (batch, classes): "
            "wrap it so that forward returns the logits alone")
    if out.dim() == 0 or out.shape[0] != n_images:
        raise QnnRepairError(
            f"the model returns a tensor of shape {tuple(out.shape)} for {n_images} images, "
            "not logits (batch, classes): wrap it so that forward returns them")


def run_once(model: nn.Module, calls: list[str]) -> None:
    """Refuse a Conv2d / Linear that runs more than once per forward (shared weights), from
    the layer calls of one forward pass in order (quantizer.layer_calls)."""
    counts = Counter(calls)
    shared = [n for n in counts if counts[n] > 1]
    if shared:
        module = model.get_submodule(shared[0])
        raise QnnRepairError(
            f"layer {shared[0]!r} ({type(module).__name__}) runs {counts[shared[0]]} "
            "times per forward pass; qnnrepair repairs layers that run once: give each use "
            "its own module")


@contextmanager
def reference_path(quant_model: nn.Module, float_model: nn.Module,
                   layers: list[str]) -> Iterator[None]:
    """Inside the block every quantized layer computes its kernel in float: the float model's
    weight and bias, its input not rounded."""
    quant_layers = [quant_model.get_submodule(n) for n in layers]
    try:
        for name, layer in zip(layers, quant_layers):
            float_layer = float_model.get_submodule(name)
            layer.reference = (float_layer.weight.detach(),
                               None if float_layer.bias is None else float_layer.bias.detach())
        yield
    finally:
        for layer in quant_layers:
            layer.reference = None


def self_check(user_model: nn.Module, quant_model: nn.Module, float_model: nn.Module,
               layers: list[str], images: torch.Tensor) -> None:
    """The quantized model on its float path reproduces the user's model on `images`; else one
    line naming the first layer whose output differs."""
    x = images[:CHECK_IMAGES]
    with torch.no_grad():
        expected = user_model.eval()(x)
        with reference_path(quant_model, float_model, layers):
            got = _output(quant_model, x)
    if got is not None and _close(expected, got):
        return
    name, diff = _first_difference(quant_model, float_model, layers, x)
    if name is not None:
        raise QnnRepairError(
            f"self-check failed: layer {name!r} of the quantized model computes something else "
            f"than the float layer (relative difference {diff:.2g} in float); qnnrepair cannot "
            "quantize this layer faithfully: report the model's code")
    difference = ("it fails" if got is None
                  else f"relative difference {_relative(expected, got):.2g}")
    raise QnnRepairError(
        f"self-check failed: the quantized model, computing in float, differs from your model "
        f"({difference}, tolerance {RTOL}) although every "
        "quantized layer matches its float layer: BatchNorm folding or an operation outside "
        "Conv2d/Linear changed the result; report the model's code")


def _first_difference(quant_model, float_model, layers, x) -> tuple[str | None, float]:
    with torch.no_grad():
        with capture({n: float_model.get_submodule(n) for n in layers}) as expected:
            float_model(x)
        with capture({n: quant_model.get_submodule(n) for n in layers}) as got, \
                reference_path(quant_model, float_model, layers):
            _output(quant_model, x)  # a crash leaves the layers before it captured
    for name in layers:
        a, b = expected.get(name), got.get(name)
        if a is None or b is None or a.shape != b.shape or not _close(a, b):
            return name, (_relative(a, b) if a is not None and b is not None
                          and a.shape == b.shape else float("inf"))
    return None, 0.0


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The model's output, or None when its forward raises (a wrong shape downstream)."""
    try:
        return model(x)
    except Exception:  # noqa: BLE001 (the layer to blame is found by the caller)
        return None


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and bool(torch.isfinite(b).all()) and _relative(a, b) <= RTOL)
