"""No work twice: a candidate that changes a deployed graph from step k on starts from the
values the unchanged graph has at step k.

The guard scores every candidate on the same validation images. A candidate changes the
integers of a few layers; every step before the first of them computes what it computed for
the quantized model. `PrefixCache` keeps, per batch of those images, the values live at the
entry of a step (computed once on the unchanged graph, lazily, from the nearest step it
already holds) within a memory budget, and runs each candidate from there. The logits are the
same bits as a full pass (the steps are the same functions of the same values).

A graph takes part when it offers `start_values(pixels)`, `advance(values, start, stop)`,
`finish(values, start)` and `first_changed_step(base)` (formats/tflite/graph.py) and computes a
file's own integers (`runs_file_integers`): a float reference that qnnrepair's quantizer has
re-quantized holds layers these methods do not know, and is run whole.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)

# Memory for the cached values of all batches together: at MobileNetV2's stride-8 stage, 500
# ImageNet images' live values take about 200 MB; earlier steps are recomputed instead.
DEFAULT_BUDGET_BYTES = 512 * 2**20


def supports_prefix(model) -> bool:
    return all(hasattr(model, name) for name in ("start_values", "advance", "finish",
                                                 "first_changed_step")) \
        and model.runs_file_integers


class PrefixCache:
    """Values of `base` (the unchanged graph) live at chosen steps, per batch of `images`."""

    def __init__(self, base, images: torch.Tensor, batch_size: int,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.base, self.budget = base, budget_bytes
        self.batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        self.entries: OrderedDict[int, list[dict]] = OrderedDict()  # step -> per-batch values
        self.reused_steps = 0  # steps not run again, summed over candidates (for the log)

    @torch.no_grad()
    def logits(self, model) -> torch.Tensor:
        """`model`'s outputs on the images: `base` with some integers changed. Runs from the
        nearest held step; on the way, keeps the values at the first changed step when they
        fit the budget (the steps before it are the base's), for the candidates after it."""
        k = model.first_changed_step(self.base)
        start, entries = self._nearest(k)
        keep = start < k and k > 0
        kept, size, outputs = [], 0, []
        for i, batch in enumerate(self.batches):
            values = dict(entries[i]) if entries else model.start_values(batch)
            step = start
            if keep:
                values, step = model.advance(values, start, k), k
                kept.append(dict(values))  # finish() below drops what it has used
                size += _bytes(values)
                keep = size <= self.budget
            outputs.append(model.finish(values, step))
        self.reused_steps += start
        if keep:
            self._hold(k, kept, size)
        return torch.cat(outputs)

    def _nearest(self, k: int) -> tuple[int, list[dict] | None]:
        """The held step nearest below or at `k` and its values (0, None: none)."""
        held = [s for s in self.entries if s <= k]
        if not held:
            return 0, None
        step = max(held)
        self.entries.move_to_end(step)
        return step, self.entries[step]

    def _hold(self, k: int, values: list[dict], size: int) -> None:
        """Keep `values` (at step k), dropping the least recently used entries to fit."""
        while self.entries and sum(_bytes(v) for e in self.entries.values()
                                   for v in e) + size > self.budget:
            self.entries.popitem(last=False)
        self.entries[k] = values


def _bytes(values: dict) -> int:
    return sum(t.numel() * t.element_size() for t in values.values())
