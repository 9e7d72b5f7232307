"""Reading one layer's input or output batch by batch, for the layer-by-layer baselines.

Layer-by-layer methods need, for layer l, the input the quantized model feeds it (earlier layers
already changed) and the float layer's output. A hook records the tensor and then stops the
forward pass (the layers after l are not needed), so a sweep over L layers costs about L/2 full
forward passes instead of L. Hooks are removed in `finally`, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.hooks import capture, on_forward, run_until_stop, stop_after


def check_calibration(images: torch.Tensor | None, method: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise QnnRepairError(
            f"{method} needs calibration images as a non-empty float tensor (N, C, H, W), "
            f"got {shape}"
        )
    return images.float()


@torch.no_grad()
def stream_layer(model: nn.Module, module: nn.Module, images: torch.Tensor, batch_size: int,
                 fn: Callable[[int, torch.Tensor], None], *, output: bool) -> None:
    """Call `fn(first_image, tensor)` for each batch with `module`'s input (or output) when
    `model` runs on `images`; the forward pass stops right after `module`."""
    what = "output" if output else "input"
    # capture is entered first, so its hook stores the tensor before stop_after's hook stops.
    with capture({"layer": module}, what) as store, stop_after(module, what):
        for start in range(0, len(images), batch_size):
            store.clear()
            run_until_stop(model, images[start:start + batch_size])
            if "layer" not in store:
                raise QnnRepairError(
                    f"layer {type(module).__name__} is not called by the model's forward pass; "
                    "give a model whose quantized layers all run"
                )
            fn(start, store["layer"])


def collect_layer(model: nn.Module, module: nn.Module, images: torch.Tensor, batch_size: int,
                  *, output: bool, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """`module`'s input (or output) on all `images`, concatenated (optionally transformed)."""
    parts: list[torch.Tensor] = []
    stream_layer(model, module, images, batch_size,
                 lambda _start, t: parts.append(transform(t) if transform else t), output=output)
    return torch.cat(parts)


def channel_sums(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-channel (dim 1) sum over images and positions in float64, and the count summed."""
    flat = t.double().transpose(0, 1).reshape(t.shape[1], -1)
    return flat.sum(dim=1), flat.shape[1]


@torch.no_grad()
def channel_means(model: nn.Module, modules: dict[str, nn.Module], images: torch.Tensor,
                  batch_size: int) -> dict[str, torch.Tensor]:
    """Mean output of every module in `modules`, per channel, in one pass over `images`."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(modules, 0)

    def record(name: str, out: torch.Tensor) -> None:
        total, n = channel_sums(out.detach())
        sums[name] = sums[name] + total if name in sums else total
        counts[name] += n

    with on_forward(modules, record, "output"):
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    missing = [n for n in modules if n not in sums]
    if missing:
        raise QnnRepairError(f"layers {missing} are not called by the model's forward pass")
    return {n: sums[n] / counts[n] for n in modules}
