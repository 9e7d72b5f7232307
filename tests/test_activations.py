"""Recorded LP rows against direct computations."""

import torch
import torch.nn.functional as F

from qnnrepair.quantization import QuantConv2d
from qnnrepair.repair.activations import patches_at


def test_patches_at_equal_unfold_columns():
    torch.manual_seed(0)
    for stride, padding, dilation, groups in [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1),
                                             (2, 1, 1, 4)]:
        layer = QuantConv2d(8, 8, (3, 3), stride, padding, dilation, groups)
        x = torch.randn(5, 8, 9, 9)
        cols = F.unfold(x, (3, 3), dilation, padding, stride)  # (n, C*9, L)
        out_w = (9 + 2 * padding - dilation * 2 - 1) // stride + 1
        image = torch.tensor([0, 3, 4, 4])
        pos = torch.tensor([0, 5, 7, out_w * out_w - 1])
        got = patches_at(layer, x, image, pos // out_w, pos % out_w)
        want = cols[image, :, pos]
        assert torch.equal(got, want), f"stride {stride} padding {padding} dilation {dilation}"
