"""GPTQ: the optimal-brain-quantization step against a hand-written reference, error below RTN,
and the baseline on a real (tiny) quantized model."""

from __future__ import annotations

import torch

from qnnrepair.baselines import get_baseline
from qnnrepair.baselines.gptq import gptq_quantize
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.testing import example_inputs, tiny_conv_net


def obq_reference(w: torch.Tensor, h: torch.Tensor, scale: float, qmax: int) -> torch.Tensor:
    """Column by column in the given order, written out: quantize column j, spread its error
    over the later columns with the inverse Hessian of the columns left, then remove column j
    from that inverse (the Gaussian-elimination update of OBQ)."""
    w, hinv = w.clone(), torch.linalg.inv(h)
    q = torch.zeros_like(w)
    for j in range(w.shape[1]):
        q[:, j] = torch.clamp(torch.round(w[:, j] / scale), -qmax, qmax)
        err = (w[:, j] - q[:, j] * scale) / hinv[0, 0]
        w[:, j + 1:] -= err[:, None] * hinv[0, 1:][None, :]
        hinv = hinv[1:, 1:] - hinv[1:, :1] @ hinv[:1, 1:] / hinv[0, 0]
    return q


def test_matches_the_hand_written_obq_steps():
    changed = 0
    for seed in range(10):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(4, 50, generator=generator, dtype=torch.float64)
        x[1] += 0.8 * x[0]  # correlated inputs: the error feedback matters
        h = 2 * x @ x.T / 50
        w = torch.randn(3, 4, generator=generator, dtype=torch.float64)
        scale = 0.2
        expected = obq_reference(w, h, scale, qmax=7)
        got = gptq_quantize(w[None], h[None], torch.full((1, 3), scale, dtype=torch.float64),
                            7, damping=0.0, act_order=False)[0]
        torch.testing.assert_close(got, expected)
        changed += not torch.equal(got, torch.clamp(torch.round(w / scale), -7, 7))
    assert changed >= 2  # the feedback changes roundings, not only in one draw


def test_output_error_below_round_to_nearest():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 400, generator=generator, dtype=torch.float64)
    x = torch.linalg.qr(torch.randn(16, 16, generator=generator, dtype=torch.float64))[0] @ \
        torch.diag(torch.logspace(0, -1, 16, dtype=torch.float64)) @ x  # anisotropic inputs
    w = torch.randn(8, 16, generator=generator, dtype=torch.float64)
    scale = w.abs().amax(dim=1) / 7
    q = gptq_quantize(w[None], (2 * x @ x.T / 400)[None], scale[None], 7)[0]
    rtn = torch.clamp(torch.round(w / scale[:, None]), -7, 7)

    def error(qw):
        return float(((w - qw * scale[:, None]) @ x).pow(2).sum())

    assert error(q) < 0.9 * error(rtn)


def test_baseline_lowers_the_layer_output_error_on_a_model():
    model, images = tiny_conv_net(), example_inputs(64)
    qmodel = quantize(model, QuantConfig.from_setting("w3a8"), images)
    out = get_baseline("gptq")(qmodel, images)
    assert out is not qmodel
    changed = sum(int((out.layer(n).weight_int != qmodel.layer(n).weight_int).sum())
                  for n in qmodel.layers)
    assert changed > 0
    for n in qmodel.layers:  # on the grid
        assert int(out.layer(n).weight_int.abs().max()) <= out.layer(n).qmax
    with torch.no_grad():
        f = model(images)
        err_rtn = (qmodel.model(images) - f).pow(2).mean()
        err_gptq = (out.model(images) - f).pow(2).mean()
    assert err_gptq < err_rtn
