"""formats/tflite: reading a fully integer .tflite, simulating it like LiteRT, writing it back.

Fast tests use tiny files built in memory (tflite_builder.py) that hold every supported
operator; the slow ones run the shared MobileNetV2 files over real ImageNet images.
Tolerance for agreement with LiteRT: none. The simulation copies LiteRT's kernels' rounding,
so every output integer must be equal (measured: 200/200 nips17 images, both files).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tflite", reason="needs the tflite extra: pip install 'qnnrepair[tflite]'")
litert = pytest.importorskip("ai_edge_litert.interpreter",
                             reason="needs the tflite extra: pip install 'qnnrepair[tflite]'")

from qnnrepair.errors import QnnRepairError  # noqa: E402
from qnnrepair.formats import layers as deployed_layers  # noqa: E402
from qnnrepair.formats.arithmetic import exact_in_float32  # noqa: E402
from qnnrepair.formats.tflite import (  # noqa: E402
    TFLiteConv2d,
    TFLiteLinear,
    load_tflite,
    write_tflite,
)

from .tflite_builder import differing_bytes, tiny_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MODELS = SHARED / "models" / "imagenet"
IMAGES = SHARED / "data" / "imagenet" / "nips17"


def litert_outputs(path: Path, pixels: np.ndarray) -> np.ndarray:
    """LiteRT's raw output integers for NHWC uint8 images, one at a time (default delegates)."""
    interpreter = litert.Interpreter(str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for image in pixels:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(results)


def simulated(model, pixels: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(pixels).permute(0, 3, 1, 2))


def stored_output(path: Path, real: torch.Tensor) -> np.ndarray:
    """The simulation's real-valued output back on the output tensor's integers."""
    interpreter = litert.Interpreter(str(path))
    scale, zero_point = interpreter.get_output_details()[0]["quantization"]
    if scale == 0:  # a float output (after DEQUANTIZE): compare real values
        return real.numpy()
    return (np.round(real.numpy() / scale) + zero_point).astype(np.int64)


@pytest.fixture(params=["int8", "uint8"])
def tiny_file(request, tmp_path) -> Path:
    path = tmp_path / f"tiny_{request.param}.tflite"
    path.write_bytes(tiny_model(request.param))
    return path


def random_pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)


# --- reading and simulating -------------------------------------------------------------------


def test_tiny_model_matches_litert_exactly(tiny_file):
    pixels = random_pixels(64)
    model = load_tflite(tiny_file)
    got, want = simulated(model.model, pixels).numpy(), litert_outputs(tiny_file, pixels)
    worst = np.abs(got - want).max() * 256  # outputs are probabilities on a 1/256 grid
    print(f"{tiny_file.name}: largest difference {worst} output steps on 64 inputs")
    assert worst == 0, f"{worst} output steps apart from LiteRT"


@pytest.mark.parametrize("accumulator", ["float32", "float64 bias", "float64"])
def test_fast_path_computes_the_observed_paths_integers(tiny_file, accumulator, monkeypatch):
    """Evaluation runs on centred integers; a hook (capture, blame) sees the real-valued path.
    Both give the same bits, also where the accumulator needs float64 (a bias, or partial
    sums, beyond float32's integers: forced here, the tiny model's sums are small)."""
    model = load_tflite(tiny_file)
    layer = model.layer(model.layers[1])
    if accumulator == "float64 bias":
        layer.bias_int[0] = 2**25 + 3
        assert exact_in_float32(layer._partial_sum_bound())
    if accumulator == "float64":
        monkeypatch.setattr(deployed_layers, "exact_in_float32", lambda bound: False)
    pixels = torch.from_numpy(random_pixels(16)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        fast = model.model(pixels)
        hook = layer.register_forward_hook(lambda *args: None)
        observed = model.model(pixels)
        hook.remove()
    assert torch.equal(fast, observed)


def test_layers_expose_integers_and_grid(tiny_file):
    model = load_tflite(tiny_file)
    assert len(model.layers) == 4
    kinds = [type(model.layer(n)) for n in model.layers]
    assert kinds == [TFLiteConv2d, TFLiteConv2d, TFLiteConv2d, TFLiteLinear]
    depthwise = model.layer(model.layers[1])
    assert depthwise.groups == 4 and tuple(depthwise.weight_int.shape) == (8, 1, 3, 3)
    for name in model.layers:
        layer = model.layer(name)
        assert layer.qmin <= int(layer.weight_int.min()) <= int(layer.weight_int.max()) \
            <= layer.qmax
        assert layer.bias_int.dtype == torch.int32
    if "uint8" in tiny_file.name:
        assert depthwise.weight_zero_point.unique().numel() == 1
        assert depthwise.qmin != -depthwise.qmax  # asymmetric grid
    else:
        assert not depthwise.weight_zero_point.any() and depthwise.per_channel


def test_float_reference_has_same_names_and_is_close(tiny_file):
    model = load_tflite(tiny_file)
    pixels = random_pixels(32)
    q, f = simulated(model.model, pixels), simulated(model.float_model, pixels)
    for name in model.layers:
        assert isinstance(model.float_layer(name), (torch.nn.Conv2d, torch.nn.Linear))
    gap = (q - f).abs().max().item()
    print(f"{tiny_file.name}: float reference vs integer simulation, max |dp| = {gap:.4f}")
    assert 0 < gap < 0.1


def test_same_padding_is_tensorflow_style():
    from qnnrepair.formats.tflite.ops import same_padding
    assert same_padding(224, 3, 2, 1) == (0, 1)  # even size, stride 2: nothing before
    assert same_padding(7, 3, 1, 1) == (1, 1)
    assert same_padding(5, 3, 2, 1) == (1, 1)


@pytest.mark.parametrize("seed", range(5))
def test_xnnpack_add_in_int32_is_the_int64_sum(seed):
    """8-bit inputs take the int32 path of the add; the int64 path gives the same integers."""
    from qnnrepair.formats.tflite.arithmetic import xnnpack_add_centred
    g = torch.Generator().manual_seed(seed)
    ra = torch.randint(-255, 256, (4000,), generator=g).float()
    rb = torch.randint(-255, 256, (4000,), generator=g).float()
    sa, sb, so = (float(v) for v in torch.rand(3, generator=g) * 0.1 + 1e-3)
    fast = xnnpack_add_centred(ra, sa, rb, sb, so, -128, 127, max_abs=255)
    wide = xnnpack_add_centred(ra.long(), sa, rb.long(), sb, so, -128, 127)
    assert fast.dtype == torch.int32 and wide.dtype == torch.int64
    assert torch.equal(fast.long(), wide)


def test_unsupported_operator_is_one_line_error(tmp_path):
    path = tmp_path / "tanh.tflite"
    path.write_bytes(tiny_model("int8", extra_op="TANH"))
    with pytest.raises(QnnRepairError, match="TANH") as info:
        load_tflite(path)
    assert "\n" not in str(info.value)


def test_float_model_is_one_line_error(tmp_path):
    path = tmp_path / "float.tflite"
    path.write_bytes(tiny_model("int8", float_weights=True))
    with pytest.raises(QnnRepairError, match="float model") as info:
        load_tflite(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [0, 6, 100, 0.5, 0.97])
def test_truncated_file_is_one_line_error(tiny_file, tmp_path, keep):
    data = tiny_file.read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[:n])
    with pytest.raises(QnnRepairError) as info:
        load_tflite(path)
    assert "\n" not in str(info.value)


# --- writing ----------------------------------------------------------------------------------


def test_round_trip_without_change_is_identical(tiny_file, tmp_path):
    model = load_tflite(tiny_file)
    out = tmp_path / "same.tflite"
    before = tiny_file.read_bytes()
    assert write_tflite(tiny_file, model, out) == []
    assert out.read_bytes() == before
    assert tiny_file.read_bytes() == before


def test_changed_integers_reach_litert_and_only_their_bytes(tiny_file, tmp_path):
    model = load_tflite(tiny_file)
    head = model.layer(model.layers[-1])  # fully connected: 5 logits
    head.weight_int[2] = torch.clamp(head.weight_int[2] + 40, head.qmin, head.qmax)
    head.bias_int[2] += 3000
    conv = model.layer(model.layers[0])
    conv.weight_int[0, 0, 0, 0] = conv.qmin  # the grid's edge must still fit the stored type
    out = tmp_path / "changed.tflite"
    changed = write_tflite(tiny_file, model, out)
    assert len(changed) == 3

    differing, allowed = differing_bytes(tiny_file, out, [model.layers[-1], model.layers[0]])
    assert differing and differing <= allowed, "bytes outside the weight/bias buffers changed"

    pixels = random_pixels(32, seed=1)
    want = litert_outputs(out, pixels)
    assert not np.array_equal(want, litert_outputs(tiny_file, pixels))
    got = simulated(model.model, pixels).numpy()
    assert np.abs(got - want).max() == 0, "LiteRT on the written file disagrees with the change"
    reread = load_tflite(out)
    for name in model.layers:
        assert torch.equal(reread.layer(name).weight_int, model.layer(name).weight_int)
        assert torch.equal(reread.layer(name).bias_int, model.layer(name).bias_int)


def test_writer_refuses_off_grid_and_in_place(tiny_file, tmp_path):
    model = load_tflite(tiny_file)
    with pytest.raises(QnnRepairError, match="original"):
        write_tflite(tiny_file, model, tiny_file)
    layer = model.layer(model.layers[0])
    layer.weight_int[0, 0, 0, 0] = layer.qmax + 1
    out = tmp_path / "bad.tflite"
    with pytest.raises(QnnRepairError, match="do not fit"):
        write_tflite(tiny_file, model, out)
    assert not out.exists()
    with pytest.raises(QnnRepairError, match="float"):
        write_tflite(tiny_file, model.float_model, out)


# --- the shared MobileNetV2 files (slow) -------------------------------------------------------

MOBILENETS = ["mobilenet_v2_1.0_224_quant.tflite", "tf2_mobilenet_v2_1.0_224_ptq.tflite"]


def _imagenet(n: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    with open(IMAGES / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    pixels = np.stack([np.asarray(Image.open(IMAGES / r["file"]).convert("RGB")) for r in rows])
    return pixels, np.array([int(r["label"]) for r in rows])


needs_shared = pytest.mark.skipif(not (MODELS.is_dir() and IMAGES.is_dir()),
                                  reason=f"shared ImageNet models/images not found under {SHARED}")


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenet_matches_litert(name):
    path = MODELS / name
    pixels, labels = _imagenet(20)
    model = load_tflite(path)
    want = litert_outputs(path, pixels)
    got = stored_output(path, simulated(model.model, pixels))
    agree = (got.argmax(1) == want.argmax(1)).mean()
    exact = (got == want).all(axis=1).mean()
    print(f"{name}: top-1 agreement {agree:.1%}, identical outputs {exact:.1%} on 20 images")
    assert agree == 1.0 and exact == 1.0
    assert len(model.layers) == 53
    float_top1 = (simulated(model.float_model, pixels).argmax(1).numpy() - 1 == labels).mean()
    quant_top1 = (want.argmax(1) - 1 == labels).mean()
    print(f"{name}: top-1 on 20 images: LiteRT {quant_top1:.0%}, float reference {float_top1:.0%}")
    assert float_top1 >= quant_top1 - 0.15


@pytest.mark.slow
@needs_shared
def test_mobilenet_write_changes_only_the_head(tmp_path):
    path = MODELS / MOBILENETS[1]
    model = load_tflite(path)
    out = tmp_path / "same.tflite"
    write_tflite(path, model, out)
    assert out.read_bytes() == path.read_bytes()
    head = model.layer(model.layers[-1])
    # class 207 (golden retriever) gets 20 logit units more: every image should become one
    head.bias_int[1 + 207] += int(20 / head.bias_scale()[1 + 207])
    write_tflite(path, model, out)
    pixels, _ = _imagenet(4)
    want = litert_outputs(out, pixels)
    assert (want.argmax(1) == 208).all()
    assert np.array_equal(stored_output(out, simulated(model.model, pixels)), want)


def test_check_against_litert_passes_and_names_a_wrong_tensor(tiny_file):
    from qnnrepair.errors import QnnRepairError
    from qnnrepair.formats.tflite.check import check_against_litert

    model = load_tflite(tiny_file)
    pixels = torch.from_numpy(random_pixels(2)).permute(0, 3, 1, 2).float()
    check_against_litert(tiny_file, model.model, pixels)
    layer = model.layer(model.layers[1])
    layer.bias_int += 1000  # the simulation no longer computes the file's integers
    op_index = int(model.layers[1].split(".")[1])
    name = model.model.names[op_index]
    with pytest.raises(QnnRepairError, match=f"tensor {name!r} has .* integers other than"):
        check_against_litert(tiny_file, model.model, pixels)
