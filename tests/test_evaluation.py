"""qnnrepair.evaluation: predictions in eval mode, the model's own flags left as they were."""

import pytest
import torch

from qnnrepair.evaluation import accuracy, predict
from qnnrepair.testing import example_inputs, tiny_conv_net


def test_predict_restores_train_mode():
    net, x = tiny_conv_net(), example_inputs(6)
    expected = predict(net, x)  # eval mode, as tiny_conv_net returns it
    net.train()
    net.bn1.eval()  # a mixed model: every module keeps its own flag
    got = predict(net, x, batch_size=4)
    assert torch.equal(got, expected), "predict must run in eval mode (BatchNorm running stats)"
    assert net.training and net.conv1.training and net.bn2.training
    assert not net.bn1.training


def test_predict_leaves_eval_mode_alone():
    net, x = tiny_conv_net(), example_inputs(4)
    accuracy(net, x, torch.zeros(4, dtype=torch.int64))
    assert not any(m.training for m in net.modules())


def test_predict_restores_flags_when_the_forward_raises():
    net = tiny_conv_net().train()
    with pytest.raises(RuntimeError):
        predict(net, torch.zeros(2, 5, 8, 8))  # 5 channels, conv1 wants 3
    assert all(m.training for m in net.modules())
