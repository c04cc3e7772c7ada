"""Checkpoints: safetensors weights + JSON metadata, written atomically, reloaded with one call.

Layout of ``model.safetensors`` written by :func:`save`:

* the tensors of ``model.state_dict()`` (every tensor copied, so weights shared between modules are stored
  once per key and safetensors' shared-storage restriction never bites);
* the safetensors header metadata key ``"torchrobust"`` holding a JSON document::

      {"format": 1, "model": {"name": "mlp", "kwargs": {...}, "transforms": [...]}, "metadata": {...}}

  ``model`` is the ``torchrobust_spec`` that :func:`torchrobust.models.create` attaches to every zoo model;
  ``transforms`` lists the defences applied since (``reprogram``, ``forge``) with their arguments, replayed on
  load before the weights are copied in. ``metadata`` is whatever the caller passed (training arguments,
  metrics, ...), which must be JSON-serialisable.

A human-readable copy of the JSON is written beside the weights as ``model.safetensors.json``; :func:`load`
reads only the copy inside the safetensors file, so the two can never disagree about the weights.

Writes go to a temporary file in the destination folder, are flushed to disk, then ``os.replace``-d over the
target: an interrupted save never destroys the checkpoint the user had.

Foreign checkpoints (``.pt``/``.pth``/``.bin``) are read with ``torch.load(weights_only=True)`` only
(:func:`load_state_dict_file`), never unpickled with arbitrary code.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import TorchRobustError
from .io import atomic_write_bytes, check_file_path, write_texts

__all__ = ["save", "load", "load_metadata", "load_state_dict_file", "load_weights", "atomic_write_bytes",
           "state_dict_mismatch", "write_texts"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META_KEY = "torchrobust"


def _jsonable(obj: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise TorchRobustError(f"checkpoint {where} is not JSON-serialisable ({exc}); pass plain numbers, "
                               "strings, lists and dicts") from None


def save(model: nn.Module, path: str | os.PathLike[str], spec: Mapping[str, Any] | None = None,
         **metadata: Any) -> Path:
    """Save ``model`` to ``path`` (a ``.safetensors`` file) with JSON ``metadata``; returns the path.

    ``spec`` (``{"name": ..., "kwargs": ..., "transforms": [...]}``) defaults to ``model.torchrobust_spec``;
    a model built outside :func:`torchrobust.models.create` must pass one for :func:`load` to rebuild it.
    """
    from safetensors.torch import save as st_save

    path = check_file_path(path)
    check_file_path(path.with_name(path.name + ".json"))
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    spec = dict(spec if spec is not None else getattr(module, "torchrobust_spec", None) or {})
    if "name" not in spec:
        raise TorchRobustError("model has no torchrobust_spec; build it with torchrobust.models.create(...) or "
                               "pass spec={'name': ..., 'kwargs': {...}} to save()")
    doc = {"format": FORMAT_VERSION, "model": _jsonable(spec, "model spec"),
           "metadata": _jsonable(metadata, "metadata")}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    blob = st_save(tensors, metadata={_META_KEY: json.dumps(doc)})
    atomic_write_bytes(path, blob)
    atomic_write_bytes(path.with_name(path.name + ".json"), (json.dumps(doc, indent=2) + "\n").encode())
    log.info("saved %s (%d tensors)", path, len(tensors))
    return path


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    if not path.is_file():
        raise TorchRobustError(f"checkpoint not found: {path} (give the path of a .safetensors file written "
                               "by torchrobust)")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise TorchRobustError(f"corrupt checkpoint {path}: not a readable safetensors file "
                               f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                               "re-save it or restore a copy") from None
    raw = (header.get("__metadata__") or {}).get(_META_KEY)
    if raw is None:
        raise TorchRobustError(f"{path} has no torchrobust metadata; load its weights into a model with "
                               "torchrobust.checkpoint.load_weights(model, path)")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        raise TorchRobustError(f"corrupt checkpoint {path}: its torchrobust metadata is not valid JSON; "
                               "re-save it") from None
    problem = _doc_problem(doc)
    if problem is not None:
        raise TorchRobustError(f"corrupt checkpoint {path}: its torchrobust metadata {problem}; re-save it with "
                               "torchrobust.checkpoint.save") from None
    return doc, tensors


def _doc_problem(doc: Any) -> str | None:
    """What is wrong with the structure of a stored checkpoint document, or None (see the module docstring)."""
    if not isinstance(doc, dict):
        return f"is a JSON {type(doc).__name__}, not an object"
    spec = doc.get("model")
    if not isinstance(spec, dict):
        return "has no 'model' object"
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        return "names no model ('model.name' is missing)"
    if not isinstance(spec.get("kwargs") or {}, dict):
        return "has 'model.kwargs' that is not an object"
    transforms = spec.get("transforms") or []
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        return "has 'model.transforms' that is not a list of objects"
    if not isinstance(doc.get("metadata") or {}, dict):
        return "has 'metadata' that is not an object"
    return None


def load_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document stored in a torchrobust checkpoint (``format``, ``model``, ``metadata``)."""
    return _read(path)[0]


def _apply_transforms(model: nn.Module, transforms: list[Mapping[str, Any]]) -> nn.Module:
    for t in transforms:
        name, kwargs = t.get("name"), t.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise TorchRobustError(f"checkpoint transform {name!r} has kwargs that are not an object; re-save it")
        if name == "reprogram":
            from .reprogramming import reprogram as apply
            if "eps" in kwargs and "irls_eps" not in kwargs:  # written before the IRLS damping was renamed
                kwargs = {("irls_eps" if k == "eps" else k): v for k, v in kwargs.items()}
        elif name == "forge":
            from .forging.surgery import forge

            def apply(m: nn.Module, inplace: bool, **kw: Any) -> nn.Module:
                return forge(m, None, inplace=inplace, **kw)
        else:
            raise TorchRobustError(f"checkpoint uses unknown transform {name!r}; upgrade torchrobust")
        try:
            model = apply(model, inplace=True, **kwargs)
        except TypeError as exc:
            raise TorchRobustError(f"checkpoint transform {name!r} has invalid arguments ({exc}); re-save it with "
                                   "this torchrobust") from None
    return model


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved by :func:`save` and load its weights (strictly); returned in eval mode."""
    from . import models

    doc, tensors = _read(path)
    if doc.get("format") != FORMAT_VERSION:
        raise TorchRobustError(f"{path} has checkpoint format {doc.get('format')!r}, this torchrobust reads "
                               f"{FORMAT_VERSION}; upgrade torchrobust")
    spec = doc["model"]
    model = models.create(spec["name"], **dict(spec.get("kwargs") or {}))
    model = _apply_transforms(model, list(spec.get("transforms") or []))
    _load_into(model, tensors, path)
    model.torchrobust_spec = dict(spec)
    return model.to(map_location).eval()


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot be loaded strictly into ``model`` (missing/unexpected keys, a shape), or None."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[0]!r}")
        return "; ".join(parts)
    for k, v in state.items():
        if own[k].shape != v.shape:
            return f"{k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
    return None


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    why = state_dict_mismatch(model, state)
    if why is not None:
        raise TorchRobustError(f"checkpoint {path} does not match the model ({why}); check the architecture "
                               "arguments")
    model.load_state_dict(dict(state), strict=True)


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.safetensors`` file or a foreign ``.pt``/``.pth`` file (``weights_only=True``).

    Common wrappers (``{"state_dict": ...}``, ``{"model_state_dict": ...}``, ``{"model": ...}``) and
    DataParallel's ``module.`` prefix are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchRobustError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_plain_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a user-file problem
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchRobustError(f"cannot read {path} as a weights-only torch checkpoint ({first[:200]}); "
                               "re-export it as a plain state_dict") from None
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TorchRobustError(f"{path} does not hold a state_dict of tensors; re-export it with "
                               "torch.save(model.state_dict(), path)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _read_plain_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchRobustError(f"corrupt safetensors file {path} ({first}); re-save it") from None


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a state_dict file (ours or foreign, see :func:`load_state_dict_file`) into ``model`` strictly."""
    _load_into(model, load_state_dict_file(path), path)
    return model
