"""A neuron is an output unit of a Linear layer or an output channel of a Conv layer."""

from typing import NamedTuple


class Neuron(NamedTuple):
    """`(layer, index)`: the layer's fully qualified module name and the output unit/channel."""

    layer: str
    index: int

    def __str__(self) -> str:
        return f"{self.layer}[{self.index}]"
