"""Which layers are ranked and repaired: one definition for `localize`, `repair` and the report."""

from __future__ import annotations

from qnnrepair.errors import QnnRepairError

# "hidden": every quantized layer but the output one (the default); "last": the output layer
# only (the paper's setting); "all": both.
LAYER_CHOICES = ("hidden", "last", "all")


def layer_names(qmodel, which: str = "hidden") -> list[str]:
    """The names of `qmodel`'s quantized layers selected by `which`, in forward order."""
    layers = list(qmodel.layers)
    if which == "hidden":
        return layers[:-1]
    if which == "last":
        return layers[-1:]
    if which == "all":
        return layers
    raise QnnRepairError(f"unknown layers {which!r}: use one of {', '.join(LAYER_CHOICES)}")
