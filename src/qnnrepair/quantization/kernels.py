"""Every convolution and matrix product a model computes becomes a module of its own: its kernel.

A stock `nn.Conv2d` (zero padding) or `nn.Linear` is its own kernel: its forward is one
`F.conv2d` / `F.linear` call on its input with its own weight. A subclass with a forward of its
own (TensorFlow "same" padding inside `forward`, as efficientnet_pytorch's and timm's
`Conv2dSame`; a weight standardized inside `forward`, as timm's `StdConv2d`; a `padding_mode`
other than zeros) is not: quantizing it as a plain convolution of its geometry loses what its
forward does. Such a module is wrapped in `OwnForward`, which still runs the user's forward and
hands its one kernel call to a plain `nn.Conv2d` / `nn.Linear` child named `kernel`, holding the
weight and bias that call really used (for `StdConv2d`, the standardized weight). From then on
BatchNorm folding, quantization, every capture and export see plain kernels, whose input is the
tensor the kernel call really received (the padded input, for "same" padding).

Why wrap rather than trace (torch.fx / torch.export): the model's own Python forward keeps
running, so whatever it does around its kernels (data-dependent shapes, in-place ops, modules
called twice) behaves as in the user's code, and module names stay the user's.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from qnnrepair.errors import QnnRepairError
from qnnrepair.hooks import capture

logger = logging.getLogger(__name__)

_KERNEL_FUNCTIONS = {F.conv2d: "conv2d", torch.conv2d: "conv2d", F.linear: "linear"}
# Weighted ops the quantizer does not handle: a model weight reaching one is refused.
_OTHER_WEIGHTED = {F.conv1d: "conv1d", F.conv3d: "conv3d",
                   F.conv_transpose1d: "conv_transpose1d", F.conv_transpose2d: "conv_transpose2d",
                   F.conv_transpose3d: "conv_transpose3d", F.bilinear: "bilinear"}
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGS = ("input", "weight", "bias")


@dataclass
class KernelCall:
    """One F.conv2d / F.linear call as a module's forward made it."""

    op: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    geometry: dict  # conv2d: stride, padding, dilation, groups; linear: empty

    def spec(self) -> dict:
        """Plain data that rebuilds the kernel module (stored in .qnn files)."""
        return {"op": self.op, "weight_shape": list(self.weight.shape),
                "bias": self.bias is not None,
                **{k: _plain(v) for k, v in self.geometry.items()}}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _arguments(op: str, args: tuple, kwargs: dict) -> dict:
    names = _CONV_ARGS if op == "conv2d" else _LINEAR_ARGS
    bound = dict(zip(names, args))
    bound.update(kwargs)
    if op == "conv2d":
        bound = {**_CONV_DEFAULTS, **bound}
    bound.setdefault("bias", None)
    return bound


class _RecordKernels(TorchFunctionMode):
    """Records every kernel call (and refuses none): what one module's forward computes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[KernelCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _KERNEL_FUNCTIONS.get(func)
        if op is not None:
            a = _arguments(op, args, kwargs)
            geometry = {k: a[k] for k in ("stride", "padding", "dilation", "groups")} \
                if op == "conv2d" else {}
            bias = None if a["bias"] is None else a["bias"].detach().clone()
            self.calls.append(KernelCall(op, a["weight"].detach().clone(), bias, geometry))
        return func(*args, **kwargs)


class _Redirect(TorchFunctionMode):
    """Hands the first kernel call of a forward to `kernel` (its weight and bias are ignored:
    the kernel holds its own)."""

    def __init__(self, kernel: nn.Module) -> None:
        super().__init__()
        self.kernel = kernel
        self.used = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _KERNEL_FUNCTIONS.get(func)
        if op is not None and not self.used:
            self.used = True
            return self.kernel(_arguments(op, args, kwargs)["input"])
        return func(*args, **kwargs)


class OwnForward(nn.Module):
    """A user's Conv2d / Linear subclass whose forward still runs, its kernel call computed by
    the child `kernel`. The user's module is held outside the module tree (`own`), so that
    folding, quantization and captures find only the kernel; its own parameters are not used
    for the result (the kernel's weight is what its forward's kernel call received)."""

    def __init__(self, own: nn.Module, kernel: nn.Module) -> None:
        super().__init__()
        # Its parameters only feed the kernel call the redirect drops: no gradient, and an
        # exporter may treat them as constants.
        object.__setattr__(self, "own", own.requires_grad_(False))
        self.kernel = kernel

    def forward(self, *args, **kwargs):
        redirect = _Redirect(self.kernel)
        with redirect:
            out = self.own(*args, **kwargs)
        if not redirect.used:
            raise QnnRepairError(f"{type(self.own).__name__} made no convolution or linear call "
                                 "in this forward pass; qnnrepair needs one per call")
        return out

    def train(self, mode: bool = True) -> OwnForward:
        self.own.train(mode)
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"own={type(self.own).__name__}"


def has_own_forward(module: nn.Module) -> bool:
    """True for a Conv2d / Linear whose forward is not one kernel call on its own weight."""
    if isinstance(module, nn.Conv2d):
        return type(module).forward is not nn.Conv2d.forward or module.padding_mode != "zeros"
    if isinstance(module, nn.Linear):
        return type(module).forward is not nn.Linear.forward
    return False


def kernel_module(spec: dict) -> nn.Module:
    """An empty plain kernel from `KernelCall.spec()`."""
    out_ch, *rest = spec["weight_shape"]
    if spec["op"] == "linear":
        return nn.Linear(rest[0], out_ch, bias=spec["bias"])
    padding = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"]) \
        if isinstance(spec["padding"], list) else spec["padding"]
    return nn.Conv2d(rest[0] * spec["groups"], out_ch, tuple(rest[1:]), _tuple(spec["stride"]),
                     padding, _tuple(spec["dilation"]), spec["groups"], bias=spec["bias"])


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def own_kernels(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, dict[str, dict]]:
    """A copy of `model` with every module that has its own forward wrapped in OwnForward, and
    {module name: kernel spec} of the wrapped ones. Refuses (one line, naming the module) a
    forward that makes other than one kernel call, or whose kernel weight depends on the input.
    """
    names = [n for n, m in model.named_modules() if n and has_own_forward(m)]
    if not names:
        return model, {}
    model = copy.deepcopy(model).eval()
    modules = {n: model.get_submodule(n) for n in names}
    with capture(modules, "input") as inputs, torch.no_grad():
        model(example)
    specs = {}
    for name in names:
        if name not in inputs:
            continue  # never runs: left as it is, nothing to quantize in it
        kernel, specs[name] = _kernel_of(name, modules[name], inputs[name])
        wrapped = OwnForward(modules[name], kernel)
        _check_same(name, modules[name], wrapped, inputs[name])
        _set_module(model, name, wrapped)
    logger.info("%d modules keep their own forward: %s", len(specs), ", ".join(specs))
    return model, specs


def wrap_kernels(model: nn.Module, specs: dict[str, dict]) -> nn.Module:
    """Give a freshly built model the OwnForward structure of `specs` (for loading its state)."""
    for name, spec in specs.items():
        _set_module(model, name, OwnForward(model.get_submodule(name), kernel_module(spec)))
    return model


def _kernel_of(name: str, module: nn.Module, x: torch.Tensor) -> tuple[nn.Module, dict]:
    """The plain kernel of the module's one kernel call, and its spec."""
    calls = _kernel_calls(module, x)
    if len(calls) != 1:
        raise QnnRepairError(
            f"module {name!r} ({type(module).__name__}) makes {len(calls)} convolution/linear "
            "calls in its forward; qnnrepair quantizes modules that make exactly one: split it "
            "into one Conv2d / Linear per call")
    call = calls[0]
    # The weight the call used must not depend on the input (a dynamic or conditional conv).
    other = _kernel_calls(module, torch.flip(x, dims=[0]) * 0.5 + 0.25)
    if len(other) != 1 or not torch.equal(other[0].weight, call.weight):
        raise QnnRepairError(
            f"module {name!r} ({type(module).__name__}) computes its weight from its input; "
            "qnnrepair quantizes fixed weights only: leave this module out of the model")
    spec = call.spec()
    kernel = kernel_module(spec)
    with torch.no_grad():
        kernel.weight.copy_(call.weight)
        if call.bias is not None:
            kernel.bias.copy_(call.bias)
    return kernel.eval(), spec


def _kernel_calls(module: nn.Module, x: torch.Tensor) -> list[KernelCall]:
    recorder = _RecordKernels()
    with recorder, torch.no_grad():
        module(x)
    return recorder.calls


def _check_same(name: str, module: nn.Module, wrapped: OwnForward, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = module(x), wrapped(x)
    if not isinstance(expected, torch.Tensor) or not torch.allclose(
            expected, got, rtol=1e-4, atol=1e-5 * float(expected.abs().max().clamp_min(1))):
        raise QnnRepairError(
            f"module {name!r} ({type(module).__name__}): its forward cannot be reproduced from "
            "its one kernel call; qnnrepair cannot quantize it")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def weighted_calls_outside(model: nn.Module, example: torch.Tensor) -> None:
    """Refuse a model that uses one of its own parameters as the weight of a convolution or
    linear call anywhere but in an nn.Conv2d / nn.Linear (F.conv2d(x, self.w) in a custom
    module, an nn.Conv1d, a ConvTranspose2d): those weights would stay in float unnoticed."""
    owners = {id(p): (n.rpartition(".")[0], m) for n, p in model.named_parameters()
              for m in [model.get_submodule(n.rpartition(".")[0])]}
    running: list[nn.Module] = []

    def enter(module, _args) -> None:
        running.append(module)

    def leave(_module, _args, _output) -> None:  # None: the output stays as it is
        running.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    checker = _CheckWeights(owners, running)
    try:
        with checker, torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if checker.offence is not None:
        raise QnnRepairError(checker.offence)


class _CheckWeights(TorchFunctionMode):
    def __init__(self, owners: dict, running: list) -> None:
        super().__init__()
        self.owners, self.running = owners, running
        self.offence: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _KERNEL_FUNCTIONS.get(func) or _OTHER_WEIGHTED.get(func)
        if op is not None and self.offence is None:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            owner = self.owners.get(id(weight))
            inside = self.running[-1] if self.running else None
            quantized = isinstance(inside, (nn.Conv2d, nn.Linear, OwnForward))
            if owner is not None and (op not in ("conv2d", "linear") or not quantized):
                name, module = owner
                self.offence = (
                    f"module {name or 'the model'!r} ({type(module).__name__}) uses its "
                    f"weight in F.{op} outside an nn.Conv2d / nn.Linear; qnnrepair quantizes "
                    "Conv2d and Linear layers only: make it one, or leave it out of the model")
        return func(*args, **kwargs)
