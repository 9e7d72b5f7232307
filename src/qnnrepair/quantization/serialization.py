"""One file per quantized model, versioned, loadable with torch.load(weights_only=True).

The file holds plain containers, strings and tensors only, so loading it never unpickles
arbitrary objects. The architecture is rebuilt from `model_spec` (a zoo name or module:factory).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.fileio import atomic_path
from qnnrepair.quantization.config import QuantConfig
from qnnrepair.quantization.fold import apply_fold_structure, set_module
from qnnrepair.quantization.modules import quant_layer_like
from qnnrepair.quantization.quantizer import QuantizedModel

FORMAT = "qnnrepair.quantized_model"
FORMAT_VERSION = 1


def save_quantized(qmodel: QuantizedModel, path: str | os.PathLike) -> None:
    if qmodel.model_spec is None:
        raise QnnRepairError("cannot save a quantized model without model_spec: pass "
                             "model_spec='resnet20' (or 'module:factory') to quantize()")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": qmodel.model_spec,
        "num_classes": qmodel.num_classes,
        "config": json.dumps(qmodel.config.to_dict()),
        "layers": list(qmodel.layers),
        "layer_bits": {n: [qmodel.layer(n).weight_bits, qmodel.layer(n).act_bits]
                       for n in qmodel.layers},
        "folded": [list(p) for p in qmodel.folded],
        "quant_state": qmodel.model.state_dict(),
        "float_state": qmodel.float_model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    payload = _read(Path(path))
    from qnnrepair.models import load_model  # late import: models import nothing from here

    try:
        float_model = load_model(payload["model_spec"], None,
                                 num_classes=payload["num_classes"] or 10)
        apply_fold_structure(float_model, [tuple(p) for p in payload["folded"]])
        float_model.load_state_dict(payload["float_state"])
        quant_model = _quant_structure(float_model, payload["layer_bits"])
        quant_model.load_state_dict(payload["quant_state"])
    except (RuntimeError, KeyError, AttributeError) as err:
        raise QnnRepairError(f"{path}: quantized model does not fit architecture "
                             f"{payload['model_spec']!r} ({_first_line(err)})") from None
    return QuantizedModel(quant_model.eval(), float_model.eval(),
                          QuantConfig.from_dict(json.loads(payload["config"])),
                          list(payload["layers"]), [tuple(p) for p in payload["folded"]],
                          payload["model_spec"], payload["num_classes"])


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
    if payload.get("format_version") != FORMAT_VERSION:
        raise QnnRepairError(f"{path} has format version {payload.get('format_version')}, this "
                             f"qnnrepair reads version {FORMAT_VERSION}: re-create the file")
    return payload


def _quant_structure(float_model: torch.nn.Module, layer_bits: dict) -> torch.nn.Module:
    model = copy.deepcopy(float_model)
    for name, (wbits, abits) in layer_bits.items():
        set_module(model, name, quant_layer_like(model.get_submodule(name), wbits, abits))
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
