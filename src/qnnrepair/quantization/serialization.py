"""One file per quantized model, versioned, loadable with torch.load(weights_only=True).

The file holds plain containers, strings and tensors only, so loading it never unpickles
arbitrary objects. The architecture is rebuilt from `model_spec` (a zoo name, module:factory
or path/file.py:factory).

Version 3 adds `kernels`: the modules that keep their own forward (quantization.kernels) and
their kernels' geometry, rebuilt before the state is loaded.
Version 2 adds `model_origin`: for a user's model, the absolute file its factory was imported
from and the folder that import needs on sys.path, so that a later command run from another
folder still finds it, or says exactly what to pass. Version 1 files (no origin) are read too.
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path

import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.fileio import atomic_path
from qnnrepair.quantization.config import QuantConfig
from qnnrepair.quantization.fold import apply_fold_structure, set_module
from qnnrepair.quantization.kernels import wrap_kernels
from qnnrepair.quantization.modules import quant_layer_like
from qnnrepair.quantization.quantizer import QuantizedModel

FORMAT = "qnnrepair.quantized_model"
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)  # 1: no model_origin; 2: no kernels


def save_quantized(qmodel: QuantizedModel, path: str | os.PathLike) -> None:
    if qmodel.model_spec is None:
        raise QnnRepairError("cannot save a quantized model without model_spec: pass "
                             "model_spec='resnet20' (or 'module:factory') to quantize()")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": qmodel.model_spec,
        "model_origin": _origin(qmodel.model_spec),
        "num_classes": qmodel.num_classes,
        "config": json.dumps(qmodel.config.to_dict()),
        "layers": list(qmodel.layers),
        "layer_bits": {n: [qmodel.layer(n).weight_bits, qmodel.layer(n).act_bits]
                       for n in qmodel.layers},
        "folded": [list(p) for p in qmodel.folded],
        "kernels": json.dumps(qmodel.kernels, sort_keys=True),
        "quant_state": qmodel.model.state_dict(),
        "float_state": qmodel.float_model.state_dict(),
    }
    # Saved through a buffer: torch.save names the archive's inner folder after the file it
    # writes, and the atomic write's temporary name is random; a buffer's is always "archive",
    # so the same model gives the same bytes.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())


def load_quantized(path: str | os.PathLike, model_spec: str | None = None) -> QuantizedModel:
    """The quantized model in file `path`. Its architecture is rebuilt from the spec stored in
    the file or, for a user's model, from `model_spec` naming the same factory elsewhere (e.g.
    `path/to/file.py:make_net` when the file was made from `mymodel:make_net`)."""
    payload = _read(Path(path))
    spec = _spec_to_use(Path(path), payload["model_spec"], model_spec)
    float_model, spec = _build(Path(path), payload, spec, given=model_spec is not None)
    kernels = json.loads(payload.get("kernels", "{}"))
    try:
        wrap_kernels(float_model, kernels)
        apply_fold_structure(float_model, [tuple(p) for p in payload["folded"]])
        float_model.load_state_dict(payload["float_state"])
        quant_model = _quant_structure(float_model, payload["layer_bits"])
        quant_model.load_state_dict(payload["quant_state"])
    except (RuntimeError, KeyError, AttributeError) as err:
        raise QnnRepairError(f"{path}: quantized model does not fit architecture "
                             f"{spec!r} ({_first_line(err)})") from None
    return QuantizedModel(quant_model.eval(), float_model.eval(),
                          QuantConfig.from_dict(json.loads(payload["config"])),
                          list(payload["layers"]), [tuple(p) for p in payload["folded"]],
                          spec, payload["num_classes"], kernels)


def _origin(spec: str) -> dict[str, str]:
    from qnnrepair.models.loading import model_origin

    return model_origin(spec)


def _spec_to_use(path: Path, stored: str, given: str | None) -> str:
    if given is None or given == stored:
        return stored
    factory = stored.rpartition(":")[2]
    if ":" not in stored or ":" not in given or given.rpartition(":")[2] != factory:
        raise QnnRepairError(
            f"model spec {given} does not match the architecture {stored} that {path} was "
            f"quantized from: leave the model out" + (
                f" or name the same factory, e.g. path/to/file.py:{factory}" if ":" in stored
                else ""))
    return given


def _build(path: Path, payload: dict, spec: str, given: bool) -> tuple[torch.nn.Module, str]:
    """The float architecture, and the spec it was finally built from: the stored one, else
    (from another folder) the file or import folder recorded when the file was written."""
    from qnnrepair.models import load_model  # late import: models import nothing from here
    from qnnrepair.models.loading import ModelImportError, on_sys_path

    num_classes = payload["num_classes"] or 10
    origin = payload.get("model_origin") or {}
    module, _, factory = spec.rpartition(":")
    if not given and module.endswith(".py") and Path(origin.get("file", "")).is_file():
        spec = f"{origin['file']}:{factory}"  # the very file it was made from, wherever we are
    try:
        return load_model(spec, None, num_classes=num_classes), spec
    except ModelImportError as err:
        failure = err
    if not given and origin.get("path_entry") and Path(origin["path_entry"]).is_dir():
        try:
            with on_sys_path(Path(origin["path_entry"])):
                return load_model(spec, None, num_classes=num_classes), spec
        except ModelImportError:
            pass
    where = f" (from {origin['file']} when the file was written)" if origin else ""
    hint = origin.get("file", "path/to/file.py")
    kind = "file" if module.endswith(".py") else "module"
    raise QnnRepairError(
        f"{path} needs model spec {spec!r}{where}, whose {kind} "
        f"{module} cannot be imported from {Path.cwd()}; pass --model {hint}:{factory} "
        "(beside --quantized) to say where the factory is"
    ) from failure


def _read(path: Path) -> dict:
    if not path.is_file():
        raise QnnRepairError(f"quantized model file {path} not found: check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise QnnRepairError(f"{path} is not a readable qnnrepair model file "
                             f"({_first_line(err)}): re-create it with `qnnrepair quantize`"
                             ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise QnnRepairError(f"{path} is not a qnnrepair quantized model: create one with "
                             "`qnnrepair quantize`")
    if payload.get("format_version") not in READ_VERSIONS:
        raise QnnRepairError(f"{path} has format version {payload.get('format_version')}, this "
                             f"qnnrepair reads versions {', '.join(map(str, READ_VERSIONS))}: "
                             "re-create the file with `qnnrepair quantize`")
    return payload


def _quant_structure(float_model: torch.nn.Module, layer_bits: dict) -> torch.nn.Module:
    model = copy.deepcopy(float_model)
    for name, (wbits, abits) in layer_bits.items():
        set_module(model, name, quant_layer_like(model.get_submodule(name), wbits, abits))
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
