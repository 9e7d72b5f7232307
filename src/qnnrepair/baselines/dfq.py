"""DFQ (Nagel et al., ICCV 2019, "Data-free quantization through weight equalization and bias
correction"): cross-layer equalization, then bias correction.

Two consecutive layers A -> act -> B, where A's output reaches B only through a positively
homogeneous activation (ReLU, and zero padding), compute the same function when A's output
channel i is divided by s_i > 0 and the weights B applies to its input channel i are multiplied
by s_i: relu(x / s) s = relu(x). Equalization picks s_i = sqrt(r1_i / r2_i), r1_i the largest
|weight| of A's channel i and r2_i of B's weights on input channel i, so that both become
sqrt(r1_i r2_i): per-tensor grids then fit every channel about as well (MobileNets' depthwise
layers, whose channel ranges differ by orders of magnitude, are the case it was made for).
Pairs are found from what the model computes (`equalizable_pairs`), depthwise-pointwise pairs
included; chains are equalized pair by pair, `iterations` times.

ReLU6 is homogeneous only below its clip. Through a ReLU6, s_i is limited so that no
calibration pre-activation crosses the clip (s_i >= m_i / 6 where channel i's largest
pre-activation m_i <= 6, else s_i = 1), which keeps the function unchanged on those images; the
paper instead replaces ReLU6 by ReLU, which changes it.

The equalized float model is quantized afresh with the same configuration (its weight scales
and activation ranges change: that is the point), then the empirical bias correction
(baselines.bias_correction; the paper's analytic variant needs BatchNorm statistics, which
folding has consumed) moves each channel's mean back.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from qnnrepair.baselines.bias_correction import bias_correction
from qnnrepair.baselines.capture import check_calibration
from qnnrepair.baselines.registry import register_baseline
from qnnrepair.data.splits import spread
from qnnrepair.hooks import on_forward
from qnnrepair.quantization import QuantizedModel, quantize

logger = logging.getLogger(__name__)

_KERNELS = (F.conv2d, torch.conv2d, F.linear)
_RELU = (F.relu, torch.relu, torch.relu_, F.relu_)
# ReLU / ReLU6 written as a clamp (x.clamp(0, 6), torch.clamp(x, min=0), ...): how a .tflite
# file's float reference applies its fused activations, and how much user code writes them
_CLAMP = (torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip, torch.Tensor.clamp_,
          torch.Tensor.clip_, torch.clamp_, torch.clip_)
_CLAMP_MIN = (torch.clamp_min, torch.Tensor.clamp_min, torch.Tensor.clamp_min_,
              torch.clamp_min_)
CLIP = 6.0


@dataclass
class Pair:
    """A's output channels feed B's input channels through `clipped` (a ReLU6) or not."""

    first: str
    second: str
    clipped: bool


@register_baseline("dfq")
def dfq(qmodel: QuantizedModel, calibration_images: torch.Tensor, *, seed: int = 0,
        show_progress: bool = False, iterations: int = 4, correct_bias: bool = True,
        max_images: int | None = 256) -> QuantizedModel:
    """A new QuantizedModel of the equalized float model, quantized with qmodel's config on
    `calibration_images`, then bias-corrected on `max_images` of them (spread evenly)."""
    images = check_calibration(calibration_images, "dfq")
    if max_images is not None:
        images = images[torch.from_numpy(spread(len(images), max_images))]
    float_model = copy.deepcopy(qmodel.float_model).eval()
    pairs = equalizable_pairs(float_model, qmodel.layers, images[:2])
    equalize(float_model, pairs, images[:64], iterations)
    out = quantize(float_model, qmodel.config, images, model_spec=qmodel.model_spec, seed=seed,
                   show_progress=show_progress)
    out.folded, out.kernels, out.num_classes = list(qmodel.folded), dict(qmodel.kernels), \
        qmodel.num_classes
    logger.info("dfq: %d pairs equalized (%d through ReLU6)", len(pairs),
                sum(p.clipped for p in pairs))
    if correct_bias:
        out = bias_correction(out, images, seed=seed, show_progress=show_progress)
    return out


def equalizable_pairs(model: nn.Module, layers: list[str], example: torch.Tensor) -> list[Pair]:
    """(A, B) pairs where everything A outputs reaches only B, through ReLU / ReLU6 and zero
    padding, found by recording the calls of one forward pass."""
    modules = {n: model.get_submodule(n) for n in layers}
    owner = {id(m.weight): n for n, m in modules.items()}
    recorder = _Calls()
    with recorder, torch.no_grad():
        model(example)
    pairs = []
    for index, call in enumerate(recorder.calls):
        first = owner.get(call.weight_id)
        if first is None or call.kind != "kernel":
            continue
        value, clipped, after = call.outputs[0], False, index
        while True:
            users = recorder.users(value, after)
            if not users:
                break
            after, user = users[0]
            in_place = any(t is value for t in user.outputs)
            if len(users) != 1 and not in_place:  # read twice: scaling it would change both
                break
            if user.kind == "kernel" and user.inputs[0] is value:
                second = owner.get(user.weight_id)
                if second is not None and _channels_match(modules[first], modules[second]):
                    pairs.append(Pair(first, second, clipped))
                break
            if user.kind not in ("relu", "relu6", "pad") or user.inputs[0] is not value:
                break  # anything else (an add, a concat, an in-place +=) ends the chain
            clipped |= user.kind == "relu6"
            value = user.outputs[0]  # the same tensor for an in-place activation
    return pairs


def equalize(model: nn.Module, pairs: list[Pair], images: torch.Tensor,
             iterations: int) -> None:
    """Cross-layer equalization of `pairs` in place, `iterations` sweeps."""
    peaks = _channel_peaks(model, [p.first for p in pairs if p.clipped], images)
    with torch.no_grad():
        for _ in range(iterations):
            for pair in pairs:
                a, b = model.get_submodule(pair.first), model.get_submodule(pair.second)
                scale = _scales(a, b, peaks.get(pair.first) if pair.clipped else None)
                a.weight.div_(scale.reshape(-1, *[1] * (a.weight.dim() - 1)))
                if a.bias is not None:
                    a.bias.div_(scale)
                _scale_inputs(b, scale)
                if pair.first in peaks:
                    peaks[pair.first] = peaks[pair.first] / scale


def output_ranges(layer: nn.Module) -> torch.Tensor:
    """Largest |weight| of each output channel."""
    return layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).amax(dim=1)


def input_ranges(layer: nn.Module) -> torch.Tensor:
    """Largest |weight| applied to each input channel."""
    w = layer.weight.detach().abs()
    if isinstance(layer, nn.Linear):
        return w.amax(dim=0)
    groups = layer.groups
    per_group = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).amax(dim=(1, 3))
    return per_group.reshape(-1)  # (groups * in per group) = input channels


def _scales(a: nn.Module, b: nn.Module, peak: torch.Tensor | None) -> torch.Tensor:
    r1, r2 = output_ranges(a).double(), input_ranges(b).double()
    scale = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-30)),
                        torch.ones_like(r1))
    if peak is not None:  # through a ReLU6: no calibration value may cross the clip
        peak = peak.double()
        scale = torch.where(peak <= CLIP, torch.maximum(scale, peak / CLIP),
                            torch.ones_like(scale))
    return scale.float()


def _scale_inputs(layer: nn.Module, scale: torch.Tensor) -> None:
    w = layer.weight
    if isinstance(layer, nn.Linear):
        w.mul_(scale[None, :])
        return
    groups, c_out, per_group = layer.groups, w.shape[0], w.shape[1]
    view = w.view(groups, c_out // groups, per_group, *w.shape[2:])
    view.mul_(scale.reshape(groups, 1, per_group, *[1] * (w.dim() - 2)))


def _channels_match(a: nn.Module, b: nn.Module) -> bool:
    c_in = b.weight.shape[1] * (b.groups if isinstance(b, nn.Conv2d) else 1)
    return a.weight.shape[0] == c_in


def _channel_peaks(model: nn.Module, names: list[str], images: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """Largest output of each channel of the named layers on `images`."""
    peaks: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        peak = out.detach().transpose(0, 1).reshape(out.shape[1], -1).amax(dim=1)
        peaks[name] = peak if name not in peaks else torch.maximum(peaks[name], peak)

    modules = {n: model.get_submodule(n) for n in dict.fromkeys(names)}
    with on_forward(modules, keep, "output"), torch.no_grad():
        for start in range(0, len(images), 16):
            model(images[start:start + 16])
    return peaks


@dataclass
class _Call:
    kind: str  # kernel, relu, relu6, pad, other
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    weight_id: int | None = None


class _Calls(TorchFunctionMode):
    """Every torch call of one forward pass, with its tensor arguments and results (kept alive,
    so that ids stay unique)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        outputs = [r for r in (result if isinstance(result, (tuple, list)) else (result,))
                   if isinstance(r, torch.Tensor)]
        if func is torch.Tensor.__setitem__:  # returns nothing but writes into its tensor
            outputs = [args[0]]
        call = _Call(_kind(func, args, kwargs), tensors, outputs)
        if call.kind == "kernel":
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            call.weight_id = id(weight)
        self.calls.append(call)
        return result

    def users(self, value: torch.Tensor, after: int) -> list[tuple[int, _Call]]:
        """(index, call) of the calls after call `after` that compute from `value`. Calls that
        neither return nor write a tensor (x.dim(), x.shape, x.is_contiguous(): what a .tflite
        file's float reference asks before each op) only look at its metadata and are not
        users."""
        return [(i, c) for i, c in enumerate(self.calls) if i > after and c.outputs
                and any(t is value for t in c.inputs)]


def _kind(func, args, kwargs) -> str:
    if func in _KERNELS:
        return "kernel"
    if func in _RELU:
        return "relu"
    if func is F.relu6:
        return "relu6"
    if func is F.hardtanh:
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return "relu6" if (lo, hi) == (0.0, CLIP) else "other"
    if func in _CLAMP or func in _CLAMP_MIN:
        return _clamp_kind(func, args, kwargs)
    if func is F.pad:
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        value = args[3] if len(args) > 3 else kwargs.get("value", None)
        return "pad" if mode == "constant" and not value else "other"
    return "other"


def _clamp_kind(func, args, kwargs) -> str:
    """A clamp at [0, inf) is a ReLU, at [0, 6] a ReLU6; any other bounds are "other"."""
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = None if func in _CLAMP_MIN else (args[2] if len(args) > 2 else kwargs.get("max"))
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor) or lo != 0:
        return "other"
    if hi is None:
        return "relu"
    return "relu6" if hi == CLIP else "other"
