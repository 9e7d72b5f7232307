"""Forward hooks as context managers: every capture in the package goes through here.

Four verbs, all removing their hooks in `finally` (also when the forward pass raises):

- `on_forward(modules, fn, what)` calls `fn(name, value)` each time one of `modules` runs, with
  its output (`what="output"`, a forward hook) or its first positional input (`what="input"`,
  a forward pre-hook, so before the module runs);
- `capture(modules, what, store)` keeps the latest value of each module in a dict, by name;
- `rewrite_output(modules, fn)` replaces a module's output by what `fn` returns (None: keep);
- `stop_after(module, what)` ends the forward pass once `module`'s input or output is known, and
  `run_until_stop(model, x)` runs a model that may be stopped that way.

`modules` maps names to modules; the names are the caller's (fully qualified module names, or
any key such as "in:conv1"), so one store can hold several models' tensors. Hooks registered on
the same module run in the order their contexts were entered: enter `capture` before
`stop_after` on the same module, so the tensor is stored before the pass stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError

What = Literal["input", "output"]
WHATS = ("input", "output")


class StopForward(Exception):
    """Raised by a `stop_after` hook; `run_until_stop` catches it."""


@contextmanager
def on_forward(
    modules: Mapping[str, nn.Module], fn: Callable[[str, Any], None], what: What = "output"
) -> Iterator[None]:
    """Call `fn(name, value)` whenever a module in `modules` runs inside this block.

    `value` is the module's output (`what="output"`), or its first positional argument
    (`what="input"`; None when it was called with keyword arguments only), as given: not
    detached, and not checked to be a tensor.
    """
    _check_what(what)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for name, module in modules.items():
            if what == "output":
                handles.append(module.register_forward_hook(_post_hook(name, fn)))
            else:
                handles.append(module.register_forward_pre_hook(_pre_hook(name, fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def rewrite_output(
    modules: Mapping[str, nn.Module], fn: Callable[[str, nn.Module, Any, Any], Any]
) -> Iterator[None]:
    """Inside this block, `fn(name, module, inputs, output)` runs after each module in `modules`
    and its return value, unless None, replaces the module's output."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(
                lambda m, inputs, output, name=name: fn(name, m, inputs, output)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(
    modules: Mapping[str, nn.Module],
    what: What = "output",
    store: dict[str, Any] | None = None,
    *,
    detach: bool = True,
) -> Iterator[dict[str, Any]]:
    """`store[name]` = the latest input or output of `modules[name]`, while inside the block.

    Yields `store` (a new dict when none is given). Tensors are detached copies unless
    `detach=False` (then the tensor itself); anything else is stored as it is. A copy, because
    models write into tensors after a layer made them (`nn.ReLU(inplace=True)`, `out += x`):
    a stored reference would hold what the next in-place op left. The store is left as it is
    on exit.
    """
    store = {} if store is None else store

    def keep(name: str, value: Any) -> None:
        if detach and isinstance(value, torch.Tensor):
            value = value.detach().clone()
        store[name] = value

    with on_forward(modules, keep, what):
        yield store


@contextmanager
def stop_after(module: nn.Module, what: What = "output") -> Iterator[None]:
    """Inside the block, a forward pass reaching `module` raises StopForward: right after it
    runs (`what="output"`), or as it is called, before it runs (`what="input"`)."""

    def stop(_name: str, _value: Any) -> None:
        raise StopForward

    with on_forward({"": module}, stop, what):
        yield


def run_until_stop(model: nn.Module, *args: Any, **kwargs: Any) -> bool:
    """Run `model(*args, **kwargs)`; True when a `stop_after` hook ended it, False when it ran
    to the end (the output is not needed: hooks hold what the caller wants)."""
    try:
        model(*args, **kwargs)
    except StopForward:
        return True
    return False


def _post_hook(name: str, fn: Callable[[str, Any], None]):
    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        fn(name, output)

    return hook


def _pre_hook(name: str, fn: Callable[[str, Any], None]):
    def hook(_module: nn.Module, args: tuple) -> None:
        fn(name, args[0] if args else None)

    return hook


def _check_what(what: str) -> None:
    if what not in WHATS:
        raise QnnRepairError(f"what must be one of {WHATS}, got {what!r}")
