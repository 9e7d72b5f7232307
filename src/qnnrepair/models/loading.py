"""Turn a model spec and a weights file into a ready `nn.Module` in eval mode.

Weights are read with `torch.load(..., weights_only=True)` only: a checkpoint is data, and
a full unpickle would run whatever code the file names. Every way a spec or checkpoint can
be wrong ends in a one-line `QnnRepairError` that says what to do.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pickle
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.models.registry import build_model

logger = logging.getLogger(__name__)

# Prefixes that wrappers add to every key: DataParallel / DDP, and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN_KEYS = 3  # how many offending keys an error message names
_MAX_REASON = 160  # characters of a library's own error text quoted in ours


def load_model(spec: str, weights: str | Path | None = None, num_classes: int = 10) -> nn.Module:
    """Build the model named by `spec`, load `weights` into it, and return it in eval mode.

    `spec` is a zoo name (see `list_models()`) or `package.module:factory` for a user's
    own network (`factory()` is called without arguments), importable as installed or from
    the working folder; or `path/to/file.py:factory`, the file imported with its own folder on
    sys.path. Importing runs the module's code, as any import does. Without `weights` the
    model keeps its fresh initialization.
    """
    model = _build_from_factory(spec) if ":" in spec else build_model(spec, num_classes)
    if weights is not None:
        load_weights(model, weights)
    else:
        logger.info("model %s: no weights given, using its random initialization", spec)
    return model.eval()


def load_weights(model: nn.Module, weights: str | Path) -> nn.Module:
    """Load the state dict in file `weights` into `model` (in place) after checking it fits."""
    state = read_state_dict(weights)
    _check_fits(model, state, Path(weights).name)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be missing
    logger.info("loaded %d tensors from %s", len(state), weights)
    return model


def read_state_dict(weights: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in `weights`, with wrapper prefixes stripped and values checked."""
    path = Path(weights)
    raw = _torch_load(path)
    state = _unwrap(raw, path)
    state = {_strip_prefix(key): value for key, value in state.items()}
    _check_finite(state, path)
    return state


def _torch_load(path: Path) -> object:
    if not path.exists():
        raise QnnRepairError(f"weights file {path} does not exist; check the path")
    if not path.is_file():
        raise QnnRepairError(f"weights path {path} is not a file; give the .pt/.th file itself")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "add_safe_globals" in str(err):
            raise QnnRepairError(
                f"weights file {path} holds Python objects, not just tensors, and is not loaded "
                "for safety; save it with torch.save(model.state_dict(), path)"
            ) from err
        raise _corrupt(path, err) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, ... on damaged files
        raise _corrupt(path, err) from err


def _corrupt(path: Path, err: Exception) -> QnnRepairError:
    text = str(err).split("WeightsUnpickler error:")[-1]
    reason = f"{type(err).__name__}: {_first_line(text)}"[:_MAX_REASON]
    return QnnRepairError(
        f"weights file {path} is corrupt or truncated ({reason}); re-download or re-save it"
    )


def _unwrap(raw: object, path: Path) -> Mapping[str, object]:
    """Accept `{'state_dict': {...}, ...}` (training checkpoints) or a plain state dict."""
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw:
        what = "an empty dict" if isinstance(raw, Mapping) else f"a {type(raw).__name__}"
        raise QnnRepairError(
            f"weights file {path} holds {what}, not a state dict; "
            "save it with torch.save(model.state_dict(), path)"
        )
    not_tensors = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise QnnRepairError(
            f"weights file {path} is not a state dict: {len(not_tensors)} entries are not "
            f"tensors (e.g. {_show(not_tensors)}); save torch.save(model.state_dict(), path) "
            "or a dict with the key 'state_dict'"
        )
    return raw


def _strip_prefix(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise QnnRepairError(
                f"weights file {path} has {bad} NaN/Inf values in `{key}`; "
                "the checkpoint is broken, use one saved before training diverged"
            )


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    # Old checkpoints lack BatchNorm's step counter; it plays no part in eval mode.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise QnnRepairError(
            f"weights file {source} does not fit the model: {len(missing)} keys missing "
            f"({_show(missing)}), {len(unexpected)} unexpected ({_show(unexpected)}); "
            "check that the model name (e.g. resnet20 vs resnet32) matches the checkpoint"
        )
    classifier = _classifier_keys(model)
    for key, value in state.items():
        want = expected[key].shape
        if value.shape == want:
            continue
        if key in classifier and value.shape[1:] == want[1:]:
            raise QnnRepairError(
                f"weights file has {value.shape[0]} classes in `{key}`, model has {want[0]}; "
                f"pass num_classes={value.shape[0]}"
            )
        raise QnnRepairError(
            f"weights file {source} does not fit the model: `{key}` has shape "
            f"{tuple(value.shape)} in the file, {tuple(want)} in the model; "
            "check the model name and num_classes"
        )


def _classifier_keys(model: nn.Module) -> set[str]:
    """Parameter names of the last Linear layer, whose output size is the class count."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        return set()
    return {f"{last}.weight", f"{last}.bias"} if last else {"weight", "bias"}


def _show(keys: list[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(f"`{k}`" for k in keys[:_SHOWN_KEYS])
    return shown + (", ..." if len(keys) > _SHOWN_KEYS else "")


class ModelImportError(QnnRepairError):
    """The module or file a `module:factory` spec names cannot be imported."""


def split_spec(spec: str) -> tuple[str, str]:
    """(module or file, factory) of a `module:factory` or `path/file.py:factory` spec."""
    module_name, _, factory_name = spec.rpartition(":")
    if not module_name or not factory_name:
        raise QnnRepairError(
            f"model spec {spec!r} is not package.module:factory or path/file.py:factory; "
            "write e.g. mypkg.nets:make_net or nets.py:make_net (see docs/DATA.md)"
        )
    return module_name, factory_name


def model_origin(spec: str) -> dict[str, str]:
    """Where the module of user spec `spec` was imported from, once it has been:
    {"file": its absolute file, "path_entry": the folder to put on sys.path to import it}.
    Empty for zoo names and modules not imported (or not from a file)."""
    if ":" not in spec:
        return {}
    module_name, _ = split_spec(spec)
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        return {"file": str(path), "path_entry": str(path.parent)} if path.is_file() else {}
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return {}
    path = Path(file).resolve()
    # mypkg/nets.py for "mypkg.nets" (or mypkg/__init__.py for "mypkg"): climb one folder per
    # dotted part to reach the sys.path entry it was found under.
    entry = path.parent
    for _ in range(module_name.count(".") + (path.name == "__init__.py")):
        entry = entry.parent
    return {"file": str(path), "path_entry": str(entry)}


@contextmanager
def on_sys_path(folder: Path):
    """`folder` first on sys.path for the block (a console script, unlike `python -m`, does
    not put the working folder there), then as it was."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _build_from_factory(spec: str) -> nn.Module:
    module_name, factory_name = split_spec(spec)
    # The working folder (module:factory) or the file's own folder (file.py:factory) stays on
    # sys.path while the factory runs too, for imports it makes of its neighbours.
    folder = Path(module_name).parent if module_name.endswith(".py") else Path.cwd()
    with on_sys_path(folder.resolve()):
        module = _import(module_name, spec)
        factory = getattr(module, factory_name, None)
        if factory is None or not callable(factory):
            what = "has no attribute" if factory is None else "has a non-callable"
            raise QnnRepairError(
                f"module {module_name} {what} {factory_name!r}; "
                "name a function that returns an nn.Module"
            )
        try:
            model = factory()
        except Exception as err:
            raise QnnRepairError(
                f"{spec}() raised {type(err).__name__}: {_first_line(err)}; "
                "the factory must build the model without arguments"
            ) from err
    if not isinstance(model, nn.Module):
        raise QnnRepairError(
            f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module; "
            "return the network itself"
        )
    return model


def _import(module_name: str, spec: str) -> object:
    """Import `module_name`, or load it from a file when it names a .py file."""
    if module_name.endswith(".py"):
        return _import_file(Path(module_name), spec)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not (module_name == err.name
                                    or module_name.startswith(err.name + ".")):
            raise _import_failed(module_name, spec, err) from err  # the module's own import
        raise ModelImportError(
            f"cannot import module {module_name!r} of model spec {spec!r} ({_first_line(err)}): "
            f"it is neither installed nor in the working folder {Path.cwd()}; run from the "
            "folder that holds it, add that folder to PYTHONPATH, or pass "
            "--model path/to/file.py:factory"
        ) from err
    except Exception as err:
        raise _import_failed(module_name, spec, err) from err


def _import_failed(module_name: str, spec: str, err: Exception) -> QnnRepairError:
    return QnnRepairError(
        f"importing module {module_name!r} of model spec {spec!r} failed "
        f"({type(err).__name__}: {_first_line(err)}); fix the module or install what it imports"
    )


def _import_file(path: Path, spec: str) -> object:
    if not path.is_file():
        raise ModelImportError(
            f"model file {path} of model spec {spec!r} does not exist (looked in "
            f"{path.resolve().parent}); check the path, e.g. --model path/to/file.py:factory"
        )
    resolved = path.resolve()
    name = f"qnnrepair_user_model_{resolved.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(resolved):
        return sys.modules[name]
    file_spec = importlib.util.spec_from_file_location(name, resolved)
    if file_spec is None or file_spec.loader is None:
        raise QnnRepairError(f"cannot load {path} as a Python module; check the file name")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module
    try:
        file_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise QnnRepairError(
            f"importing {path} failed ({type(err).__name__}: {_first_line(err)}); fix the file"
        ) from err
    return module


def _first_line(err: Exception | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
