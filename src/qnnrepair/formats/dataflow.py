"""Running a deployed file's operators in file order: each step reads named values and writes
one, and a value is dropped after its last reader, so memory stays at the live activations."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError


def single_input_output(source) -> tuple[Hashable, Hashable]:
    """The input and output of `source` (anything with `path`, `inputs` and `outputs`), which
    must have one of each."""
    if len(source.inputs) != 1 or len(source.outputs) != 1:
        raise QnnRepairError(f"{source.path} has {len(source.inputs)} inputs and "
                             f"{len(source.outputs)} outputs: only single-input, "
                             "single-output models are supported")
    return source.inputs[0], source.outputs[0]


def last_uses(inputs_per_step: Iterable[list[Hashable]]) -> dict[Hashable, int]:
    """For each value, the index of the last step that reads it."""
    last = {}
    for i, inputs in enumerate(inputs_per_step):
        for name in inputs:
            last[name] = i
    return last


def run(steps: Iterable[tuple[nn.Module, list[Hashable], Hashable]],
        values: dict[Hashable, torch.Tensor], output: Hashable | None,
        last_use: dict[Hashable, int], call=None, start: int = 0):
    """Run (module, inputs, output) steps on `values` (the graph input, or the values live at
    step `start`, already in it) and return the value `output`, or with `output` None the
    values live after the last step given; `call(module, *inputs)` runs one step (default:
    module(*inputs))."""
    for i, (module, inputs, out) in enumerate(steps, start):
        args = [values[name] for name in inputs]
        values[out] = module(*args) if call is None else call(module, *args)
        for name in inputs:
            if last_use.get(name) == i and name != output:
                del values[name]
    return values if output is None else values[output]
