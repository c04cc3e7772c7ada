"""Resume states of :func:`torchrobust.train.fit`: everything needed to continue a run bit for bit, no pickle.

A resume state is one safetensors file per process, ``<dir>/state.rank<R>.safetensors``, written atomically
(:func:`torchrobust.io.atomic_write_bytes`) after every epoch and every ``checkpoint_every`` optimiser
steps. Its tensors are the model's ``state_dict`` (``model.*``), the optimiser's and the LR scheduler's tensors
(``optimizer.*``, ``scheduler.*``), those of a training objective that keeps state across batches
(``objective.*``: RAMP's gradient projection, :mod:`torchrobust.psat.ramp_gp`), the RNG states (``rng.*``: torch
CPU, the training CUDA device, numpy) and the epoch's data permutation (``data.order``); its safetensors header
holds one JSON document (key ``torchrobust-resume``) with the rest: the position (epoch, batches done in it,
optimiser steps), the history so far and the epoch's running sums, the optimiser/scheduler/objective state dicts
with every tensor replaced by a reference (non-string keys, tuples and ``Counter``\\ s are tagged so they come
back as they were), Python ``random``'s state, and a *fingerprint* of the run (training configuration, model
structure, data, optimised parameters, world size, device type). :func:`load_state` refuses a state whose
fingerprint differs from the run asking for it, and one that holds an objective's state when the run's objective
keeps none (or the reverse).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as D
from ..errors import TorchRobustError
from ..io import atomic_write_bytes
from .tensors import dataset_tensors

__all__ = ["FORMAT_VERSION", "fingerprint", "has_state", "state_path", "write_state", "load_state", "clear_state",
           "read_state", "encode", "decode", "capture_rng", "restore_rng"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META_KEY = "torchrobust-resume"
#: configuration fields that do not change the result, so a run may resume with other values
NEUTRAL_CONFIG = ("progress", "checkpoint_every")


# ------------------------------------------------------------------------------------------ tagged JSON
def encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON with its tensors moved into ``tensors`` (under names starting with ``key``)."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, Counter):
        return {"__counter__": [[encode(k, f"{key}.k{i}", tensors), v] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[encode(k, f"{key}.k{i}", tensors), encode(v, f"{key}.{i}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if type(obj).__module__ == "numpy" and hasattr(obj, "dtype"):
        if getattr(obj, "ndim", 0) == 0:
            return encode(obj.item(), key, tensors)
        tensors[key] = torch.from_numpy(obj.astype("int64") if obj.dtype.kind in "iu" else obj.copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    raise TorchRobustError(f"cannot store a {type(obj).__name__} ({key}) in a resume state; use plain numbers, "
                           "strings, lists, dicts and tensors in the optimiser/scheduler state")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__counter__" in obj:
        return Counter({decode(k, tensors): v for k, v in obj["__counter__"]})
    if "__items__" in obj:
        return {decode(k, tensors): decode(v, tensors) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(decode(v, tensors) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        import numpy as np

        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    return {k: decode(v, tensors) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------ RNG states
def capture_rng(tensors: dict[str, torch.Tensor], device: torch.device | None = None) -> dict[str, Any]:
    """Torch CPU, the training CUDA device's (if any), Python ``random`` and numpy's global RNG states."""
    doc: dict[str, Any] = {"torch": encode(torch.get_rng_state(), "rng.torch", tensors),
                           "python": encode(random.getstate(), "rng.python", tensors)}
    if device is not None and device.type == "cuda":
        doc["cuda"] = encode(torch.cuda.get_rng_state(device), "rng.cuda", tensors)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's wheels
        return doc
    doc["numpy"] = encode(np.random.get_state(), "rng.numpy", tensors)
    return doc


def restore_rng(doc: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    torch.set_rng_state(decode(doc["torch"], tensors))
    random.setstate(decode(doc["python"], tensors))
    if "cuda" in doc:
        if device is None or device.type != "cuda":
            raise TorchRobustError("this resume state was written by a run on CUDA; resume it on a CUDA device "
                                   "(--device cuda)")
        torch.cuda.set_rng_state(decode(doc["cuda"], tensors), device)
    if "numpy" in doc:
        import numpy as np

        np.random.set_state(decode(doc["numpy"], tensors))


# ------------------------------------------------------------------------------------------ fingerprint
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _tensor_digest(h: Any, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")


def data_digest(data: Any) -> str:
    """SHA-256 of the training tensors (shape, dtype, bytes); for other datasets, its length and first item."""
    h = hashlib.sha256()
    tensors = dataset_tensors(data)
    if tensors is not None:
        for t in tensors:
            _tensor_digest(h, t)
    else:
        h.update(f"{type(data).__qualname__}:{len(data)}".encode())
        for item in (data[0],) if len(data) else ():
            for t in item:
                _tensor_digest(h, torch.as_tensor(t))
    return h.hexdigest()[:16]


def fingerprint(config: dict[str, Any], model: nn.Module, params: list[nn.Parameter], data: Any,
                device: torch.device | None = None) -> dict[str, Any]:
    """What a resume state must agree on with the run that loads it (the device type too: CPU and CUDA kernels
    and RNGs differ, so only the same kind of device continues a run bit for bit)."""
    names = {id(p): n for n, p in model.named_parameters()}
    structure = [type(model).__qualname__, getattr(model, "torchrobust_spec", None),
                 [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]]
    return {"config": {k: v for k, v in config.items() if k not in NEUTRAL_CONFIG},
            "model": _sha(structure), "params": _sha([names.get(id(p), "?") for p in params]),
            "data": data_digest(data), "world_size": D.world_size(),
            "device": (device or torch.device("cpu")).type}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(saved.get("config", {})) | set(now["config"])):
        a, b = saved.get("config", {}).get(k), now["config"].get(k)
        if a != b:
            out.append(f"{k} {a!r} -> {b!r}")
    labels = {"model": "model structure", "params": "trained parameters", "data": "training data",
              "world_size": "number of processes", "device": "device type"}
    out += [f"{label} {saved.get(k)!r} -> {now[k]!r}" if k in ("world_size", "device") else label
            for k, label in labels.items() if saved.get(k) != now[k]]
    return out


# ------------------------------------------------------------------------------------------ files
def state_path(directory: str | os.PathLike[str], rank: int | None = None, prev: bool = False) -> Path:
    r = D.rank() if rank is None else rank
    return Path(directory) / f"state.rank{r}{'.prev' if prev else ''}.safetensors"


def has_state(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a resume state of this process's rank."""
    return any(state_path(directory, prev=p).is_file() for p in (False, True))


def write_state(directory: str | os.PathLike[str], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, fp: dict[str, Any], position: dict[str, int], progress: dict[str, Any],
                order: torch.Tensor, device: torch.device | None = None, objective: Any = None) -> Path:
    """Write this process's resume state atomically (the previous one survives any interruption).
    ``objective``: the training objective's ``state_dict()`` (tensors and JSON-able values), or None when it keeps
    no state."""
    from safetensors.torch import save as st_save

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().to("cpu").contiguous().clone()
    tensors["data.order"] = order.to("cpu").contiguous().clone()
    doc = {"format": FORMAT_VERSION, "torch": torch.__version__, "fingerprint": fp, "position": position,
           "progress": progress, "optimizer": encode(optimizer.state_dict(), "optimizer", tensors),
           "scheduler": encode(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None,
           "objective": encode(objective, "objective", tensors) if objective is not None else None,
           "rng": capture_rng(tensors, device)}
    blob = st_save(tensors, metadata={_META_KEY: json.dumps(doc)})
    path = state_path(directory)
    if D.is_distributed() and path.is_file():  # keep one generation back: ranks may be killed between writes
        os.replace(path, state_path(directory, prev=True))
    atomic_write_bytes(path, blob)
    log.debug("resume state %s: %s", path, position)
    return path


def read_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """One resume-state file as ``(document, tensors)``, or None (with a warning) when it is unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        data = Path(path).read_bytes()
        tensors = st_load(data)
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        doc = json.loads(header["__metadata__"][_META_KEY])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable resume state %s (%s); ignoring it", path, type(exc).__name__)
        return None
    return doc, tensors


def _choose(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The newest readable state of this rank whose step every rank also has."""
    found = [s for s in (read_state(p) for p in (state_path(directory), state_path(directory, prev=True))
                         if p.is_file()) if s is not None]
    steps = {int(doc["position"]["step"]): (doc, t) for doc, t in found}
    common = set(steps)
    if D.is_distributed():
        import torch.distributed as dist

        mine = torch.tensor([max(steps, default=-1), min(steps, default=-1)], dtype=torch.int64)
        everyone = [torch.empty_like(mine) for _ in range(D.world_size())]
        dist.all_gather(everyone, mine)
        for other in everyone:
            common &= {int(s) for s in other.tolist()}
    if not common:
        raise TorchRobustError(f"no usable resume state in {directory} (missing, unreadable, or the processes' "
                               "states disagree); run without resume to start over")
    return steps[max(common)]


def load_state(directory: str | os.PathLike[str], *, model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, fp: dict[str, Any], device: torch.device | None = None,
               objective: Any = None) -> tuple[dict[str, int], dict[str, Any], torch.Tensor]:
    """Load this rank's resume state into ``model``/``optimizer``/``scheduler``, ``objective`` (one with
    ``load_state_dict``, e.g. RAMP with gradient projection; None for an objective that keeps no state) and the
    RNGs.

    Returns ``(position, progress, order)``. Raises :class:`TorchRobustError` when no state is there or it
    belongs to a different run (configuration, model structure, data, parameters or process count differ).
    """
    directory = Path(directory)
    doc, tensors = _choose(directory)
    if doc.get("format") != FORMAT_VERSION:
        raise TorchRobustError(f"resume state in {directory} has format {doc.get('format')!r}, this torchrobust "
                               f"reads {FORMAT_VERSION}; finish it with the torchrobust that wrote it")
    diff = _differences(doc.get("fingerprint") or {}, fp)
    if diff:
        raise TorchRobustError(f"resume state in {directory} is from a different run ({'; '.join(diff)}); rerun "
                               "with the original options, or delete that folder to start over")
    saved_objective = doc.get("objective")
    if (saved_objective is None) != (objective is None):
        has = "holds" if saved_objective is not None else "lacks"
        raise TorchRobustError(f"resume state in {directory} is from a different run (it {has} a training "
                               "objective's state, e.g. RAMP's gradient projection, this run's objective "
                               f"{'keeps none' if objective is None else 'needs one'}); rerun with the original "
                               "options, or delete that folder to start over")
    if doc.get("torch") != torch.__version__:
        log.warning("resume state written by torch %s, running %s: results may differ in the last bits",
                    doc.get("torch"), torch.__version__)
    if objective is not None:  # first: it refuses a state of other objective options before anything changes
        objective.load_state_dict(decode(saved_objective, tensors))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                          strict=True)
    optimizer.load_state_dict(decode(doc["optimizer"], tensors))
    if scheduler is not None:
        scheduler.load_state_dict(decode(doc["scheduler"], tensors))
    restore_rng(doc["rng"], tensors, device)
    log.info("resumed from %s at epoch %d, batch %d", directory, doc["position"]["epoch"] + 1,
             doc["position"]["batch"])
    return doc["position"], doc["progress"], tensors["data.order"]


def clear_state(directory: str | os.PathLike[str]) -> None:
    """Remove this rank's resume state files (after the final model is saved), with the temporary files of a write
    that a kill interrupted (``io.atomic_write_bytes`` names them ``.<name>.*.tmp``); the folder too once empty."""
    for prev in (False, True):
        path = state_path(directory, prev=prev)
        path.unlink(missing_ok=True)
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    try:
        Path(directory).rmdir()
    except OSError:  # other ranks' files, or the user's own files, are still there
        pass
