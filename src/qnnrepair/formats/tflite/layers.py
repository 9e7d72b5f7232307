"""The quantized layers of a TFLite graph: what a repair changes.

The interface and the arithmetic are qnnrepair.formats.layers.DeployedLayer's; what is
TFLite's own:

- `weight_int` holds the *centred* integers q - z_w (int16): real weight = s_w * weight_int
  holds for both files, but the grid is [qmin, qmax] = [-128 - z_w, 127 - z_w] (int8) or
  [-z_w, 255 - z_w] (uint8), not [-qmax, qmax]: read `qmin` as well as `qmax`.
  `weight_zero_point` keeps z_w (per tensor; zeros for int8 per-channel files).
- The activation grid is the file's: unsigned or signed 8 bit (`act_qmin`, `act_qmax`).
- `padding` is always 0: the op in front pads with TensorFlow's SAME rule (more after than
  before), so the input a hook sees is already padded.

The output is the pre-activation in real units, s_x * s_w * (sum (q_x - z_x) w + bias_int),
computed from exact integers; the requantization to the output grid and the fused activation
live in the op that owns the layer (ops.ConvOp), as QuantConv2d leaves them to the next layer.
"""

from __future__ import annotations

from qnnrepair.formats.layers import DeployedConv2d, DeployedLinear


class TFLiteConv2d(DeployedConv2d):
    """CONV_2D (groups=1) or DEPTHWISE_CONV_2D (groups=in_channels); weight (out, in/groups,
    kh, kw) as in PyTorch. `padding` is always 0: a PAD in front (ops.ConvOp) pads SAME."""

    def __init__(self, *args, stride=(1, 1), dilation=(1, 1), groups: int = 1, **kwargs):
        super().__init__(*args, stride=stride, padding=(0, 0), dilation=dilation,
                         groups=groups, **kwargs)


class TFLiteLinear(DeployedLinear):
    """FULLY_CONNECTED; weight (out, in)."""


TFLITE_LAYERS = (TFLiteConv2d, TFLiteLinear)
