"""Repairing a deployed file end to end: `qnnrepair repair --quantized FILE.tflite|.onnx` reads
it, repairs its integers and writes the same kind of file, which its runtime (LiteRT, ONNX
Runtime) then runs like the simulation; only weight and bias integers differ from the input.

The files are tiny and built in the tests (tflite_builder, onnx_qdq_builder); their labels are
the float reference's predictions, so every image the quantized file gets wrong is one the
repair may win back. On these random nets only the output layer's LP finds a change the guard
keeps, so the file-in, file-out tests repair `--layers all`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from qnnrepair.cli import main
from qnnrepair.evaluation import predict
from qnnrepair.formats.deployed import input_normalization, load_deployed
from qnnrepair.localization import make_localizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inputs(model, pixels: np.ndarray) -> torch.Tensor:
    """What the pipeline feeds a .tflite model: its input normalization from the file."""
    mean, std = input_normalization(model)
    return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean[0]) / std[0]


def _labelled_by_float(model, pixels: np.ndarray, folder: Path, name: str) -> Path:
    """An .npz of `pixels` labelled with the float reference's predictions."""
    labels = predict(model.float_model, _inputs(model, pixels)).numpy()
    path = folder / f"{name}.npz"
    np.savez(path, x=pixels, y=labels)
    return path


# --- TFLite ------------------------------------------------------------------------------------

def _tflite_or_skip():
    pytest.importorskip("tflite", reason="needs the tflite extra: pip install 'qnnrepair[tflite]'")
    return pytest.importorskip("ai_edge_litert.interpreter",
                               reason="needs the tflite extra: pip install 'qnnrepair[tflite]'")


@pytest.fixture(params=["int8", "uint8"])
def tflite_case(request, tmp_path):
    _tflite_or_skip()
    from .tflite_builder import tiny_model

    path = tmp_path / f"tiny_{request.param}.tflite"
    path.write_bytes(tiny_model(request.param))
    model = load_deployed(path)
    rng = np.random.default_rng(3)
    train = _labelled_by_float(model, rng.integers(0, 256, (300, 8, 8, 3)).astype(np.uint8),
                               tmp_path, "train")
    test = _labelled_by_float(model, rng.integers(0, 256, (300, 8, 8, 3)).astype(np.uint8),
                              tmp_path, "test")
    return path, train, test


def _differing_bytes_are_weights_and_biases(original: Path, repaired: Path) -> int:
    from .tflite_builder import differing_bytes

    differing, allowed = differing_bytes(original, repaired)
    assert differing <= allowed, "bytes outside the weight/bias buffers changed"
    return len(differing)


def test_repair_tflite_file_in_file_out(tflite_case, tmp_path, capsys):
    from qnnrepair.formats.runtime import runtime_predictions

    path, train, test = tflite_case
    before = _digest(path)
    out = tmp_path / "repaired.tflite"
    code, text, err = _run(capsys, "repair", "--quantized", str(path), "--data", str(train),
                           "--test-data", str(test), "--n-repair", "200",
                           "--n-validation", "100", "--layers", "all", "--output", str(out))
    assert code == 0, err
    assert _digest(path) == before, "the input file changed"
    assert "LiteRT top-1" in text and "weight/bias tensors changed" in text
    _differing_bytes_are_weights_and_biases(path, out)

    repaired = load_deployed(out)
    x = _inputs(repaired, np.load(test)["x"][:100])
    repaired.model.return_logits = False  # the file's own output, as LiteRT's
    runtime, got = runtime_predictions(out, x)
    assert runtime == "LiteRT"
    assert np.array_equal(got, predict(repaired.model, x).numpy())


def test_repaired_integers_reach_litert_and_only_their_bytes(tflite_case, tmp_path):
    """Every neuron repaired, no guard: the LPs change integers on both grids (int8 per
    channel, uint8 with zero points), the writer puts exactly those into the file, and LiteRT
    computes what the simulation of the repaired model computes."""
    from qnnrepair.formats.deployed import write_deployed
    from qnnrepair.formats.runtime import runtime_predictions
    from qnnrepair.neurons import Neuron
    from qnnrepair.repair import Repairer, preset

    path, train, _ = tflite_case
    model = load_deployed(path)
    data = np.load(train)
    x, y = _inputs(model, data["x"][:200]), torch.from_numpy(data["y"][:200]).long()
    neurons = [Neuron(n, c) for n in model.layers for c in range(model.layer(n).out_features)]
    repaired, changes, _ = Repairer(preset("default")).repair_neurons(model, neurons, x, y)
    assert changes
    for name in model.layers:
        layer = repaired.layer(name)
        assert layer.qmin <= int(layer.weight_int.min())
        assert int(layer.weight_int.max()) <= layer.qmax
    out = tmp_path / "repaired.tflite"
    assert write_deployed(repaired, out)
    assert _differing_bytes_are_weights_and_biases(path, out) > 0

    repaired.model.return_logits = False
    _, got = runtime_predictions(out, x)
    assert np.array_equal(got, predict(repaired.model, x).numpy())


def test_tflite_repair_refuses_bad_arguments_in_one_line(tflite_case, tmp_path, capsys):
    path, train, test = tflite_case
    for extra, needle in ((["--output", str(tmp_path / "r.qnn")], "must be a .tflite"),
                          (["--output", str(tmp_path / "r.tflite"), "--model", "resnet20"],
                           "carries its model"),
                          (["--output", str(tmp_path / "r.tflite"), "--float-model",
                            str(train)], "--float-model is for ONNX")):
        listing = sorted(tmp_path.iterdir())
        code, _, err = _run(capsys, "repair", "--quantized", str(path), "--data", str(train),
                            *extra)
        assert code == 2 and needle in err, err
        assert len(err.strip().splitlines()) == 1
        assert sorted(tmp_path.iterdir()) == listing, "something was written"


@pytest.mark.parametrize("damage", ["float", "truncated", "unknown op"])
def test_bad_tflite_file_is_one_line_exit_2_nothing_written(tflite_case, tmp_path, capsys,
                                                            damage):
    from .tflite_builder import tiny_model

    _, train, test = tflite_case
    bad = tmp_path / "bad.tflite"
    if damage == "float":
        bad.write_bytes(tiny_model("int8", float_weights=True))
    elif damage == "truncated":
        bad.write_bytes(tiny_model("int8")[:600])
    else:
        bad.write_bytes(tiny_model("int8", extra_op="TANH"))
    before, listing = _digest(bad), sorted(tmp_path.iterdir())
    code, _, err = _run(capsys, "repair", "--quantized", str(bad), "--data", str(train),
                        "--test-data", str(test), "--output", str(tmp_path / "out.tflite"))
    print(err)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert {"float": "float model", "truncated": "truncated",
            "unknown op": "TANH"}[damage] in err
    assert sorted(tmp_path.iterdir()) == listing and _digest(bad) == before


def test_gradient_flows_through_the_integer_graph_without_changing_its_values(tflite_case):
    """Straight-through across every rounding: with autograd on, the graph computes the same
    integers, and blame reaches every hidden layer whose output deviates from the float one
    (through roundings of zero gradient it would be exactly 0). Not checked here: agreement
    with the counterfactual ranking, which on this random 20-neuron net is poor (Spearman
    -0.12: its KL, 5e-4, comes from rounding steps that a first-order signal cannot see)."""
    path, train, _ = tflite_case
    model = load_deployed(path)
    data = np.load(train)
    x = _inputs(model, data["x"][:200])
    y = torch.from_numpy(data["y"][:200]).long()
    with torch.no_grad():
        want = model.model(x)
    x_grad = x.clone().requires_grad_(True)
    got = model.model(x_grad)
    assert got.requires_grad and torch.equal(got.detach(), want)

    hidden = model.layers[:-1]
    loc = make_localizer("gradient", seed=0).fit(model.float_model, model.model, hidden,
                                                 [(x, y)])
    for name in hidden[1:]:  # the first layer sees exact pixels: no deviation to blame
        assert np.abs(np.asarray(loc.scores_[name])).sum() > 0, name


# --- ONNX QDQ ----------------------------------------------------------------------------------


@pytest.fixture
def onnx_case(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from qnnrepair.testing import example_inputs

    from .onnx_qdq_builder import export_float, ops_net, quantize_qdq

    # ops_net predicts several classes on these inputs (tiny_conv_net only one)
    float_path = export_float(ops_net(), tmp_path / "ops.onnx")
    qdq_path = quantize_qdq(float_path, tmp_path / "ops.qdq.onnx", True, example_inputs(64))
    return float_path, qdq_path


def test_repair_onnx_qdq_file_in_file_out(onnx_case, tmp_path, capsys):
    float_path, qdq_path = onnx_case
    model = load_deployed(qdq_path, float_path)
    rng = np.random.default_rng(4)
    norm = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
    files = []
    for name in ("train", "test"):
        pixels = rng.integers(0, 256, (300, 8, 8, 3)).astype(np.uint8)
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        labels = predict(model.float_model, x).numpy()
        np.savez(tmp_path / f"{name}.npz", x=pixels, y=labels)
        files.append(tmp_path / f"{name}.npz")
    before = (_digest(float_path), _digest(qdq_path))
    out = tmp_path / "repaired.qdq.onnx"
    code, text, err = _run(capsys, "repair", "--quantized", str(qdq_path), "--float-model",
                           str(float_path), "--data", str(files[0]), "--test-data",
                           str(files[1]), "--n-repair", "200", "--n-validation", "100", *norm,
                           "--layers", "all", "--output", str(out))
    assert code == 0, err
    assert (_digest(float_path), _digest(qdq_path)) == before, "an input file changed"
    assert "ONNX Runtime top-1" in text
    _changed_initializers_are_integers(qdq_path, out)

    # Every neuron repaired, no guard: the LPs change integers, the writer puts exactly those
    # into the file, and ONNX Runtime predicts what the simulation predicts (but for near ties:
    # ORT sums a conv's float32 products in its own order, see test_onnx_qdq.py).
    from qnnrepair.formats.deployed import write_deployed
    from qnnrepair.formats.runtime import runtime_predictions
    from qnnrepair.neurons import Neuron
    from qnnrepair.repair import Repairer, preset

    data = np.load(files[0])
    x = (torch.from_numpy(data["x"][:200]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    y = torch.from_numpy(data["y"][:200]).long()
    neurons = [Neuron(n, c) for n in model.layers for c in range(model.layer(n).out_features)]
    repaired, changes, _ = Repairer(preset("default")).repair_neurons(model, neurons, x, y)
    assert changes
    forced = tmp_path / "forced.qdq.onnx"
    write_deployed(repaired, forced)
    assert _changed_initializers_are_integers(qdq_path, forced)
    _, got = runtime_predictions(forced, x)
    assert (got == predict(repaired.model, x).numpy()).mean() >= 0.98
    # as written (no fused kernels): what the simulation computes, but for float32 sum order
    from .onnx_qdq_builder import ort_run

    runtime, written = runtime_predictions(forced, x, optimized=False)
    assert runtime == "ONNX Runtime (as written)"
    assert np.array_equal(written, ort_run(forced, x, "disable").argmax(1))
    assert (written == predict(repaired.model, x).numpy()).mean() >= 0.98


def _changed_initializers_are_integers(original: Path, written: Path) -> list[str]:
    import onnx
    from onnx import numpy_helper

    old = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(original)).graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(written)).graph.initializer}
    assert old.keys() == new.keys()
    changed = [k for k in old if not np.array_equal(old[k], new[k])]
    integer = {k for k, v in old.items() if v.dtype.kind in "iu"}
    assert set(changed) <= integer, changed
    return changed


def test_onnx_model_without_its_float_model_is_refused(onnx_case, tmp_path, capsys):
    _, qdq_path = onnx_case
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4) % 2)
    code, _, err = _run(capsys, "repair", "--quantized", str(qdq_path), "--data",
                        str(tmp_path / "d.npz"), "--output", str(tmp_path / "r.onnx"))
    assert code == 2 and "--float-model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.onnx").exists()


# --- the shared MobileNetV2 files --------------------------------------------------------------

IMAGENET = SHARED / "data" / "imagenet"
MOBILENETS = SHARED / "models" / "imagenet"


@pytest.mark.slow
@pytest.mark.skipif(not (MOBILENETS.is_dir() and IMAGENET.is_dir()),
                    reason=f"shared ImageNet models/images not found under {SHARED}")
@pytest.mark.parametrize("name", ["mobilenet_v2_1.0_224_quant.tflite",
                                  "tf2_mobilenet_v2_1.0_224_ptq.tflite"])
def test_repaired_mobilenet_predicts_in_litert_as_simulated(name, tmp_path):
    """The most-blamed 32 neurons of a deployed MobileNetV2 repaired on 16 sample1000 images
    (no guard), written back: on 30 nips17 images LiteRT predicts as the simulation does,
    before and after the repair (200 images each before: tests/formats/test_tflite.py)."""
    from qnnrepair.data import load_dataset
    from qnnrepair.formats.deployed import write_deployed
    from qnnrepair.formats.runtime import runtime_predictions
    from qnnrepair.repair import Repairer, preset

    _tflite_or_skip()
    path = MOBILENETS / name
    model = load_deployed(path)
    repair = load_dataset(IMAGENET / "sample1000", split="train")
    test = load_dataset(IMAGENET / "nips17", split="test")
    x = _inputs(model, repair.images[:16])
    y = torch.from_numpy(repair.labels[:16]).long() + 1  # output 0 is "background"
    ranking = make_localizer("gradient", seed=0).fit(
        model.float_model, model.model, model.layers[:-1], [(x[:8], y[:8]), (x[8:], y[8:])])
    repaired, changes, _ = Repairer(preset("default")).repair_neurons(
        model, ranking.ranking_[:32], x, y)
    assert changes
    out = tmp_path / "repaired.tflite"
    assert write_deployed(repaired, out)

    t = _inputs(model, test.images[:30])
    for file, simulation in ((path, model), (out, repaired)):
        simulation.model.return_logits = False
        _, got = runtime_predictions(file, t)
        want = predict(simulation.model, t).numpy()
        print(f"{name} {file.name}: top-1 agreement with LiteRT {np.mean(got == want):.0%}")
        assert np.array_equal(got, want)


# --- same inputs, same bytes -------------------------------------------------------------------

def _forced_repair_bytes(model, x, y, out: Path) -> bytes:
    """Every neuron repaired (no guard, so the file changes), written to `out`."""
    from qnnrepair.formats.deployed import write_deployed
    from qnnrepair.neurons import Neuron
    from qnnrepair.repair import Repairer, preset

    neurons = [Neuron(n, c) for n in model.layers
               for c in range(model.layer(n).weight_int.shape[0])]
    repaired, changes, _ = Repairer(preset("default")).repair_neurons(model, neurons, x, y)
    assert changes
    write_deployed(repaired, out)
    return out.read_bytes()


def test_same_inputs_and_seed_write_the_same_tflite_bytes(tflite_case, tmp_path):
    path, train, _ = tflite_case
    data = np.load(train)
    written = []
    for name in ("a", "b"):
        model = load_deployed(path)
        x = _inputs(model, data["x"][:100])
        written.append(_forced_repair_bytes(model, x, torch.from_numpy(data["y"][:100]).long(),
                                            tmp_path / f"{name}.tflite"))
    assert written[0] != path.read_bytes(), "nothing was repaired: the test would prove nothing"
    assert written[0] == written[1]


def test_same_inputs_and_seed_write_the_same_qdq_bytes(onnx_case, tmp_path):
    float_path, qdq_path = onnx_case
    pixels = np.random.default_rng(5).integers(0, 256, (100, 8, 8, 3)).astype(np.uint8)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    written = []
    for name in ("a", "b"):
        model = load_deployed(qdq_path, float_path)
        y = predict(model.float_model, x)
        written.append(_forced_repair_bytes(model, x, y, tmp_path / f"{name}.qdq.onnx"))
    assert written[0] != qdq_path.read_bytes(), "nothing was repaired: the test would prove nothing"
    assert written[0] == written[1]
