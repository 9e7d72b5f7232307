"""qnnrepair.hooks: what each verb captures on a tiny model, and that no hook outlives its block.

Captured tensors are compared with a reference computed by calling the layers by hand
(TinyConvNet's forward written out), with an exact tolerance: the same ops on the same input.
"""

import pytest
import torch
import torch.nn.functional as F

from qnnrepair.errors import QnnRepairError
from qnnrepair.hooks import StopForward, capture, on_forward, run_until_stop, stop_after
from qnnrepair.testing import example_inputs, tiny_conv_net


def _hook_counts(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _reference(net, x):
    """Each layer's input and output, computed without hooks."""
    c1 = net.conv1(x)
    h1 = F.relu(net.bn1(c1))
    c2 = net.conv2(h1)
    pooled = F.adaptive_avg_pool2d(F.relu(net.bn2(c2)), 1).flatten(1)
    return {"conv1": (x, c1), "conv2": (h1, c2), "linear": (pooled, net.linear(pooled))}


@torch.no_grad()
@pytest.mark.parametrize("what", ["input", "output"])
def test_capture_stores_each_layers_input_or_output(what):
    net, x = tiny_conv_net(), example_inputs(4)
    layers = {name: net.get_submodule(name) for name in ("conv1", "conv2", "linear")}
    with capture(layers, what) as store:
        net(x)
    assert list(store) == list(layers)  # forward order
    reference = _reference(net, x)
    for name, tensor in store.items():
        expected = reference[name][0 if what == "input" else 1]
        err = (tensor - expected).abs().max().item()
        print(f"{what} of {name}: max abs error {err}")
        assert err == 0.0, f"{what} of {name} differs by {err}"
    assert _hook_counts(net) == 0


def test_capture_detaches_unless_told_not_to():
    net, x = tiny_conv_net(), example_inputs(2)
    with capture({"conv1": net.conv1}) as detached:
        net(x)
    with capture({"conv1": net.conv1}, detach=False) as kept:
        net(x)
    assert not detached["conv1"].requires_grad
    assert kept["conv1"].requires_grad


def test_capture_fills_a_given_store_under_the_callers_keys():
    net, x = tiny_conv_net(), example_inputs(2)
    store = {"other": 1}
    with capture({"in:linear": net.linear}, "input", store) as same:
        with torch.no_grad():
            net(x)
    assert same is store
    assert set(store) == {"other", "in:linear"} and store["in:linear"].shape == (2, 8)


def test_on_forward_calls_in_forward_order_with_names():
    net, x = tiny_conv_net(), example_inputs(2)
    seen = []
    modules = {"linear": net.linear, "conv1": net.conv1, "conv2": net.conv2}  # not forward order
    with on_forward(modules, lambda name, value: seen.append((name, tuple(value.shape))), "input"):
        with torch.no_grad():
            net(x)
    assert seen == [("conv1", (2, 3, 8, 8)), ("conv2", (2, 6, 8, 8)), ("linear", (2, 8))]


@torch.no_grad()
def test_stop_after_output_lets_the_layer_run_and_nothing_after():
    net, x = tiny_conv_net(), example_inputs(2)
    after = []
    with capture({"conv2": net.conv2}) as store, stop_after(net.conv2), \
            on_forward({"linear": net.linear}, lambda *_: after.append(1)):
        assert run_until_stop(net, x) is True
    assert after == []
    assert torch.equal(store["conv2"], _reference(net, x)["conv2"][1])
    assert _hook_counts(net) == 0


@torch.no_grad()
def test_stop_after_input_stops_before_the_layer_runs():
    net, x = tiny_conv_net(), example_inputs(2)
    conv2 = {"conv2": net.conv2}
    with capture(conv2, "input") as inputs, capture(conv2) as outputs, \
            stop_after(net.conv2, "input"):
        assert run_until_stop(net, x) is True
    assert "conv2" in inputs and outputs == {}


@torch.no_grad()
def test_run_until_stop_says_false_when_the_pass_ran_to_the_end():
    net, x = tiny_conv_net(), example_inputs(2)
    assert run_until_stop(net, x) is False
    with stop_after(net.conv1):
        assert run_until_stop(net, x) is True
    assert run_until_stop(net, x) is False  # the stop hook is gone


def test_stop_forward_escapes_a_plain_call():
    net, x = tiny_conv_net(), example_inputs(2)
    with stop_after(net.linear), pytest.raises(StopForward):
        net(x)
    assert _hook_counts(net) == 0


@pytest.mark.parametrize("what", ["input", "output"])
def test_no_hook_left_behind_when_the_forward_raises(what):
    net, x = tiny_conv_net(), example_inputs(2)

    def explode(name, _value):
        raise RuntimeError(f"{name} failed")

    layers = {name: net.get_submodule(name) for name in ("conv1", "conv2", "linear")}
    with pytest.raises(RuntimeError, match="conv2 failed"):
        with capture(layers, what), stop_after(net.linear, what), \
                on_forward({"conv2": net.conv2}, explode, what):
            run_until_stop(net, x)
    for module in net.modules():
        assert module._forward_hooks == {} and module._forward_pre_hooks == {}, module


def test_no_hook_left_behind_when_registration_fails_midway():
    net = tiny_conv_net()

    class NotAModule:
        pass

    with pytest.raises(AttributeError):
        with on_forward({"conv1": net.conv1, "bad": NotAModule()}, lambda *_: None):
            pass
    assert _hook_counts(net) == 0


def test_user_hooks_survive():
    net, x = tiny_conv_net(), example_inputs(2)
    calls = []
    handle = net.conv1.register_forward_hook(lambda *_: calls.append(1))
    with capture({"conv1": net.conv1}), stop_after(net.conv1):
        run_until_stop(net, x)
    assert len(net.conv1._forward_hooks) == 1 and calls == [1]
    handle.remove()


def test_unknown_what_is_refused():
    net = tiny_conv_net()
    with pytest.raises(QnnRepairError, match="input"):
        with capture({"conv1": net.conv1}, "middle"):
            pass
    assert _hook_counts(net) == 0
