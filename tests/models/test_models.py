"""Model zoo, user models and checkpoint loading (qnnrepair.models)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from qnnrepair.data import to_tensor
from qnnrepair.errors import QnnRepairError
from qnnrepair.models import (
    CIFAR_MEAN,
    CIFAR_STD,
    ModelInfo,
    build_model,
    list_models,
    load_model,
    model_info,
)
from qnnrepair.models.resnet import PadShortcut

SHARED = Path(__file__).parents[3] / "shared"
CHECKPOINTS = SHARED / "models"
CIFAR_TEST = SHARED / "data" / "cifar10" / "test.npz"
ZOO = ["conv3", "conv5", "mobilenetv2", "resnet20", "resnet32", "resnet44", "resnet56", "vgg"]


def needs_shared(*paths: Path) -> pytest.MarkDecorator:
    missing = [str(p) for p in paths if not p.is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"shared files absent: {missing}")


def expect_error(match: str) -> pytest.RaisesContext:
    return pytest.raises(QnnRepairError, match=match)


def assert_one_line(err: pytest.ExceptionInfo) -> None:
    message = str(err.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"


# --- zoo -------------------------------------------------------------------------------------


def test_list_models_is_the_zoo() -> None:
    assert list_models() == ZOO


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_maps_cifar_images_to_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_model_info_gives_cifar_input_and_normalization() -> None:
    info = model_info("resnet20")
    assert info == ModelInfo("resnet20", (3, 32, 32), 10, CIFAR_MEAN, CIFAR_STD)
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert model_info("vgg", num_classes=100).num_classes == 100


def test_model_info_validates_itself() -> None:
    with expect_error("one value per channel"):
        ModelInfo("m", (1, 28, 28), 10, CIFAR_MEAN, CIFAR_STD)
    with expect_error("positive"):
        ModelInfo("m", (3, 32, 32), 10, CIFAR_MEAN, (0.2, 0.0, 0.2))


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
def test_resnet_has_6n_plus_2_weight_layers(name: str, blocks: int) -> None:
    layers = [m for m in build_model(name).modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 6 * blocks + 2


def test_resnet_module_names_follow_the_reference_checkpoints() -> None:
    names = set(build_model("resnet20").state_dict())
    expected = {"conv1.weight", "linear.weight", "linear.bias"} | _bn_keys("bn1")
    for stage in (1, 2, 3):
        for block in range(3):
            prefix = f"layer{stage}.{block}"
            expected |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            expected |= _bn_keys(f"{prefix}.bn1") | _bn_keys(f"{prefix}.bn2")
    assert names == expected


def _bn_keys(prefix: str) -> set[str]:
    fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return {f"{prefix}.{field}" for field in fields}


def test_pad_shortcut_subsamples_and_zero_pads_both_sides() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    assert not list(PadShortcut(16, 32, 2).parameters())


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_models_deepcopy_and_pickle(name: str) -> None:
    model = build_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(copy.deepcopy(model)(x), want)
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), want)


_OTHER_NONLINEARITIES = {torch.relu, torch.relu_, torch.clamp, F.relu6, F.hardtanh, torch.sigmoid}


@pytest.mark.parametrize("name", ZOO)
def test_each_conv_feeds_only_its_batchnorm(name: str) -> None:
    """BN folding merges a BN into its conv, which is only exact when nothing else reads
    the conv's output; such convs carry no bias of their own."""
    model = build_model(name)
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        users = list(node.users)
        feeds_bn = [u for u in users if _is_module(u, modules, nn.BatchNorm2d)]
        if feeds_bn:
            assert len(users) == 1, f"{node.target} output is also used by {users}"
            assert modules[node.target].bias is None, f"{node.target} has a bias before BN"
    others = [n.target for n in graph.nodes if n.target in _OTHER_NONLINEARITIES]
    assert not others, f"activations must be modules or F.relu, found {others}"


def _is_module(node: fx.Node, modules: dict[str, nn.Module], kind: type) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], kind)


def test_resnet_bn2_hook_sees_bn_output_not_the_residual_sum() -> None:
    model = build_model("resnet20").eval()
    seen = {}
    bn2 = model.layer1[0].bn2
    handle = bn2.register_forward_hook(lambda m, i, o: seen.update(out=o, copy=o.clone()))
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    finally:
        handle.remove()
    assert torch.equal(seen["out"], seen["copy"]), "bn2 output was changed in place"


# --- load_model ------------------------------------------------------------------------------


def test_load_model_without_weights_is_in_eval_mode() -> None:
    model = load_model("resnet20")
    assert not any(m.training for m in model.modules())


def save(tmp_path: Path, obj: object, name: str = "w.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_load_model_roundtrips_a_plain_state_dict(tmp_path: Path) -> None:
    source = build_model("resnet20").eval()
    path = save(tmp_path, source.state_dict())
    model = load_model("resnet20", path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_load_model_accepts_training_checkpoints_with_module_prefix(tmp_path: Path) -> None:
    """The reference checkpoints: {'state_dict': {'module.conv1.weight': ...}, 'best_prec1':
    ...}, saved by DataParallel and without BN's num_batches_tracked."""
    state = build_model("resnet20").state_dict()
    wrapped = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = save(tmp_path, {"state_dict": wrapped, "best_prec1": 91.7})
    model = load_model("resnet20", path)
    assert torch.equal(model.linear.weight, state["linear.weight"])


USER_MODULE = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

def not_a_model():
    return 42

def broken():
    raise RuntimeError("no GPU here")

constant = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "qnnrepair_test_usernet.py"
    path.write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def test_load_model_builds_a_user_factory_and_loads_its_weights(
    user_module: Path, tmp_path: Path
) -> None:
    source = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    path = save(tmp_path, source.state_dict())
    model = load_model("qnnrepair_test_usernet:make", path)
    assert not model.training
    assert torch.equal(model[1].weight, source[1].weight)
    from_file = load_model(f"{user_module}:make")
    assert isinstance(from_file, nn.Sequential)


def _state(name: str = "resnet20", num_classes: int = 10) -> dict[str, torch.Tensor]:
    return build_model(name, num_classes).state_dict()


def _without(state: dict, *prefixes: str) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _with(state: dict, key: str, value: torch.Tensor) -> dict:
    return {**state, key: value}


def _nan_state() -> dict:
    state = _state()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    return state


def _write_bytes(data: bytes):
    def write(tmp_path: Path) -> Path:
        path = tmp_path / "w.pt"
        path.write_bytes(data)
        return path

    return write


def _truncated(tmp_path: Path) -> Path:
    path = save(tmp_path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_WEIGHTS = {
    "missing file": (lambda t: t / "nope.pt", "does not exist"),
    "directory": (lambda t: t, "is not a file"),
    "empty file": (_write_bytes(b""), "corrupt or truncated"),
    "random bytes": (_write_bytes(bytes(range(256)) * 8), "corrupt or truncated"),
    "truncated": (_truncated, "corrupt or truncated"),
    "a list": (lambda t: save(t, [torch.zeros(2)]), "holds a list, not a state dict"),
    "empty dict": (lambda t: save(t, {}), "holds an empty dict, not a state dict"),
    "no tensors": (lambda t: save(t, {"epoch": 3, "lr": 0.1}), r"2 entries are not tensors"),
    "pickled module": (lambda t: save(t, nn.Linear(2, 2)), "holds Python objects"),
    "missing keys": (
        lambda t: save(t, _without(_state(), "linear.")),
        r"2 keys missing \(`linear.weight`, `linear.bias`\), 0 unexpected",
    ),
    "other architecture": (lambda t: save(t, _state("resnet32")), r"unexpected \(`layer1.3"),
    "class count": (
        lambda t: save(t, _state(num_classes=100)),
        r"weights file has 100 classes in `linear.weight`, model has 10; pass num_classes=100",
    ),
    "shape": (
        lambda t: save(t, _with(_state(), "conv1.weight", torch.zeros(16, 1, 3, 3))),
        r"`conv1.weight` has shape \(16, 1, 3, 3\) in the file, \(16, 3, 3, 3\) in the model",
    ),
    "nan": (lambda t: save(t, _nan_state()), "1 NaN/Inf values in `layer2.0.conv1.weight`"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_load_model_rejects_bad_weights_with_one_line(tmp_path: Path, case: str) -> None:
    make_path, match = BAD_WEIGHTS[case]
    path = make_path(tmp_path)
    with expect_error(match) as err:
        load_model("resnet20", path)
    assert_one_line(err)


BAD_SPECS = {
    "resnet21": r"unknown model 'resnet21'; known models: conv3, conv5, mobilenetv2, resnet20",
    ":make": "is not package.module:factory",
    "qnnrepair_no_such_module_xyz:make": "cannot import module 'qnnrepair_no_such_module_xyz'",
    "qnnrepair_test_usernet:missing": "has no attribute 'missing'",
    "qnnrepair_test_usernet:constant": "has a non-callable 'constant'",
    "qnnrepair_test_usernet:not_a_model": r"returned a int, not a torch.nn.Module",
    "qnnrepair_test_usernet:broken": "raised RuntimeError: no GPU here",
    "does/not/exist.py:make": "does not exist",
}


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_load_model_rejects_bad_specs_with_one_line(spec: str, user_module: Path) -> None:
    with expect_error(BAD_SPECS[spec]) as err:
        load_model(spec)
    assert_one_line(err)


def test_build_model_rejects_bad_num_classes() -> None:
    with expect_error("num_classes must be a positive integer"):
        build_model("conv3", num_classes=0)


# --- the shared reference checkpoints ----------------------------------------------------------


@needs_shared(CHECKPOINTS / "cifar10-resnet20.th")
def test_resnet20_state_dict_names_match_the_checkpoint() -> None:
    state = torch.load(CHECKPOINTS / "cifar10-resnet20.th", map_location="cpu", weights_only=True)
    names = {k.removeprefix("module.") for k in state["state_dict"]}
    ours = {k for k in build_model("resnet20").state_dict() if "num_batches_tracked" not in k}
    assert names == ours


def _correct_on_cifar_test(name: str) -> int:
    model = load_model(name, CHECKPOINTS / f"cifar10-{name}.th")
    with np.load(CIFAR_TEST) as archive:
        images, labels = archive["x"], archive["y"]
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            x = to_tensor(images[start : start + 1000], CIFAR_MEAN, CIFAR_STD)
            predicted = model(x).argmax(1).numpy()
            correct += int((predicted == labels[start : start + 1000]).sum())
    return correct


@needs_shared(CHECKPOINTS / "cifar10-resnet20.th", CIFAR_TEST)
def test_resnet20_checkpoint_reaches_its_published_accuracy() -> None:
    correct = _correct_on_cifar_test("resnet20")
    assert correct == 9173, f"ResNet-20 accuracy {correct / 100:.2f} %, expected exactly 91.73 %"


@pytest.mark.slow
@needs_shared(CHECKPOINTS / "cifar10-resnet32.th", CIFAR_TEST)
def test_resnet32_checkpoint_reaches_its_published_accuracy() -> None:
    correct = _correct_on_cifar_test("resnet32")
    assert correct == 9263, f"ResNet-32 accuracy {correct / 100:.2f} %, expected exactly 92.63 %"
