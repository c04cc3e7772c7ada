"""Resumable state without pickle: safetensors tensors + JSON metadata, bound to a fingerprint of what produced it.

A long evaluation (:func:`torchrobust.evaluate.adaptive.evaluate_adaptive`,
:func:`torchrobust.attacks.autoattack.run_autoattack`, the experiments) saves its per-attack results after every
attack so a restarted run skips the finished ones. This module is the one place that state is written and read.

**Layout.** A state lives at a *stem* ``S`` (a path without extension):

* ``S.safetensors`` — the tensors, plus the safetensors header metadata key ``"torchrobust_state"`` holding the
  JSON document ``{"format": 1, "fingerprint": {...}, "tensors": [keys], "meta": {...}}``. This one file is
  what :func:`load_state` reads: it is written atomically (:func:`torchrobust.io.atomic_write_bytes`:
  temporary file, fsync, ``os.replace``), so a run killed at any instant (even ``kill -9``) leaves either the
  previous state or the new one, never a mixture; a half-written ``.S.safetensors.*.tmp`` is never read.
* ``S.json`` — a human-readable copy of the same document, written after the tensors. It is never read back,
  so the two cannot disagree about what is resumed (the same rule as :mod:`torchrobust.checkpoint`).

Nothing is ever unpickled: safetensors holds raw tensor bytes (bool tensors included) and JSON holds the rest.

**Fingerprint.** A state is reused only when its fingerprint equals the caller's: a dict of hex SHA-256
digests, typically ``{"model": fingerprint_model(m), "data": fingerprint_tensors(x, y), "config":
fingerprint_config(cfg)}`` (:func:`make_fingerprint`). A state written for another model, other data (another
split, another subset) or another configuration is therefore never reused: :func:`load_state` logs one warning
line naming what differs and returns ``None``; the caller recomputes and its next save overwrites the stale
state atomically.

**What load_state does with what it finds** at ``S.safetensors``:

1. nothing → ``None``: a fresh run;
2. a valid torchrobust state whose fingerprint differs (another model, data split or configuration) → one warning
   line naming what differs, ``None``; the caller recomputes and its next save overwrites the stale state;
3. anything else — an empty or truncated file, one that is not safetensors, a safetensors file without our
   document, a document of another format, tensors that do not match the document, a pickle planted under the
   ``.safetensors`` name, a folder — → :class:`~torchrobust.errors.TorchRobustError`, one line naming the file,
   why, and the fix (delete it or choose another output folder / state path). A file we cannot recognise as ours
   is never overwritten, and nothing is ever unpickled. The same holds for ``S.json``: it is never read back for
   resuming, but an existing ``S.json`` that is not a torchrobust state document is refused rather than
   overwritten.

A caller that finds a loaded state (right fingerprint) inconsistent with its own work — tensors missing or of the
wrong shape, finished steps that are not its own — raises the same error through :meth:`StateStore.reject` /
:func:`state_error`: a state that claims to be this run's but is not is never silently replaced.

**Legacy ``.pt`` states.** Earlier versions pickled the state to ``state_path="x.pt"``. That spelling is still
accepted: :func:`state_stem` drops a ``.pt``/``.pth``/``.json``/``.safetensors`` suffix, so ``"x.pt"`` means the
stem ``x`` (``x.safetensors`` + ``x.json``). An existing ``x.pt``/``x.pth`` is **never loaded** (not even with
``weights_only=True``): it is ignored with one warning line (never read), and the state is kept in ``x.safetensors``.

Example::

    >>> from torchrobust.resume import StateStore, make_fingerprint
    >>> store = StateStore("runs/state_Linf_0.1", make_fingerprint(model, (x, y), config))
    >>> loaded = store.load()                      # None: nothing reusable (missing or stale)
    >>> tensors, meta = loaded if loaded is not None else ({}, {"done": []})
    >>> store.save({"correct/pgd": correct}, {"done": ["pgd"]})
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .errors import TorchRobustError
from .io import atomic_write_bytes

__all__ = ["StateStore", "canonical_json", "check_state_path", "fingerprint_config", "fingerprint_model",
           "fingerprint_tensors", "load_state", "make_fingerprint", "save_state", "state_error", "state_stem"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META_KEY = "torchrobust_state"
_STRIPPED_SUFFIXES = (".pt", ".pth", ".json", ".safetensors")
_LEGACY_SUFFIXES = (".pt", ".pth")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


# ------------------------------------------------------------------------------------------------ fingerprints
def _update(h: Any, *parts: str) -> None:
    for p in parts:
        b = p.encode("utf-8")
        h.update(struct.pack("<Q", len(b)))  # length-prefixed: ("ab", "c") and ("a", "bc") hash differently
        h.update(b)


def _update_tensor(h: Any, t: Tensor) -> None:
    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.to("cpu").contiguous()
    _update(h, str(t.dtype), str(tuple(t.shape)))
    raw = t.reshape(-1).view(torch.uint8).numpy()  # every dtype (bool, bfloat16, ...) as its raw bytes
    h.update(struct.pack("<Q", raw.nbytes))
    h.update(raw)


def fingerprint_tensors(*tensors: Tensor) -> str:
    """Hex SHA-256 of the tensors' dtypes, shapes and bytes, in order (e.g. ``fingerprint_tensors(x, y)`` for the
    data of an evaluation: another split, subset, order or label set gives another fingerprint)."""
    h = hashlib.sha256(b"torchrobust-tensors-v1\0")
    h.update(struct.pack("<Q", len(tensors)))
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TorchRobustError(f"fingerprint_tensors takes tensors, got {type(t).__name__}; pass torch.Tensor")
        _update_tensor(h, t)
    return h.hexdigest()


def fingerprint_model(model: nn.Module) -> str:
    """Hex SHA-256 of a model: every ``state_dict`` tensor (name, dtype, shape, bytes) and non-persistent buffer,
    and the module structure (each submodule's qualified name, class and ``extra_repr()``, which carries the
    hyper-parameters that are not tensors, e.g. NRPM's ``K`` or a forged threshold's ``c_r``).

    Two checkpoints with different weights, or the same weights in another architecture or with another
    defence setting, get different fingerprints. The training/eval flag is not part of it.
    """
    if not isinstance(model, nn.Module):
        raise TorchRobustError(f"fingerprint_model takes an nn.Module, got {type(model).__name__}")
    h = hashlib.sha256(b"torchrobust-model-v1\0")
    for name, m in model.named_modules():
        cls = type(m)
        _update(h, "module", name, f"{cls.__module__}.{cls.__qualname__}", m.extra_repr())
    sd = model.state_dict()
    for key, value in sd.items():
        if isinstance(value, Tensor):
            _update(h, "tensor", key)
            _update_tensor(h, value)
        else:  # get_extra_state() objects
            _update(h, "extra", key, repr(value))
    for key, buf in model.named_buffers():
        if key not in sd:
            _update(h, "buffer", key)
            _update_tensor(h, buf)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, no NaN/Inf); raises :class:`TorchRobustError` if not JSON."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise TorchRobustError(f"state configuration/metadata is not JSON-serialisable without NaN/Inf ({exc}); "
                               "pass plain numbers, strings, lists and dicts") from exc


def fingerprint_config(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON of a job configuration (dict key order does not matter)."""
    return hashlib.sha256(b"torchrobust-config-v1\0" + canonical_json(obj).encode("utf-8")).hexdigest()


def make_fingerprint(model: nn.Module | None = None, data: Sequence[Tensor] | None = None, config: Any = None,
                     **parts: str) -> dict[str, str]:
    """``{"model": ..., "data": ..., "config": ...}`` for the arguments given, plus any extra named digests
    (e.g. ``base_model=fingerprint_model(base)``)."""
    out: dict[str, str] = {}
    if model is not None:
        out["model"] = fingerprint_model(model)
    if data is not None:
        out["data"] = fingerprint_tensors(*data)
    if config is not None:
        out["config"] = fingerprint_config(config)
    for k, v in parts.items():
        if not isinstance(v, str):
            raise TorchRobustError(f"fingerprint part {k!r} must be a hex digest string, got {type(v).__name__}")
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------ paths
def state_stem(path: str | os.PathLike[str]) -> Path:
    """The stem of a state path: a trailing ``.pt``/``.pth``/``.json``/``.safetensors`` is dropped (the legacy
    ``state_path="x.pt"`` spelling means stem ``x``); any other name is kept whole, dots included
    (``state_Linf_0.1`` stays ``state_Linf_0.1``)."""
    p = Path(path)
    if p.suffix.lower() in _STRIPPED_SUFFIXES:
        p = p.with_suffix("")
    if not p.name or p.name in (".", ".."):
        raise TorchRobustError(f"state path {str(path)!r} has no file name; pass e.g. runs/state")
    return p


def _paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def check_state_path(path: str | os.PathLike[str]) -> Path:
    """Validate a state path before any work; returns its stem. Raises :class:`TorchRobustError` when the files
    cannot be written there (a folder in the way, a parent that is a file)."""
    stem = state_stem(path)
    for p in _paths(stem):
        if p.is_dir():
            raise TorchRobustError(f"state file {p} is a folder; remove it or pass another state path")
    parent = stem.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise TorchRobustError(f"state path {stem} lies under {parent}, which is a file; pass another state path")
    return stem


# ------------------------------------------------------------------------------------------------ save / load
def _cpu_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, t in tensors.items():
        if not isinstance(k, str) or not k or not isinstance(t, Tensor):
            raise TorchRobustError(f"state tensors must map non-empty names to tensors, got {k!r}: "
                                   f"{type(t).__name__}")
        out[k] = t.detach().to("cpu").contiguous().clone()  # own storage: safetensors refuses shared memory
    return out


def save_state(path_stem: str | os.PathLike[str], tensors: Mapping[str, Tensor], meta: Mapping[str, Any],
               fingerprint: Mapping[str, str]) -> Path:
    """Write ``<stem>.safetensors`` (tensors + the JSON document in its header) atomically, then the
    human-readable copy ``<stem>.json``. ``meta`` must be JSON-serialisable (no NaN/Inf). Returns the
    ``.safetensors`` path."""
    stem = state_stem(path_stem)
    cpu = _cpu_tensors(tensors)
    doc = {"format": FORMAT_VERSION, "fingerprint": dict(fingerprint), "tensors": sorted(cpu), "meta": dict(meta)}
    text = canonical_json(doc)
    st_path, json_path = _paths(stem)
    atomic_write_bytes(st_path, st_save(cpu, metadata={_META_KEY: text}))
    atomic_write_bytes(json_path, (json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return st_path


def _header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors byte string (raises ValueError when it is not one)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise ValueError("not a safetensors file: header length out of range")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a safetensors file: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: header is not a JSON object")
    return header


def _check_document(doc: Any) -> dict[str, Any]:
    fp = doc.get("fingerprint") if isinstance(doc, dict) else None
    if (not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION or not isinstance(doc.get("meta"), dict)
            or not isinstance(fp, dict) or not all(isinstance(v, str) for v in fp.values())
            or not isinstance(doc.get("tensors"), list)):
        raise ValueError(f"its document is not a format-{FORMAT_VERSION} torchrobust state")
    return doc


def _document(data: bytes) -> dict[str, Any]:
    meta = _header(data).get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(_META_KEY), str):
        raise ValueError(f"a safetensors file without a {_META_KEY!r} document")
    return _check_document(json.loads(meta[_META_KEY], parse_constant=_no_constant))


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} in the state document")


def _warn_legacy(stem: Path) -> None:
    for suffix in _LEGACY_SUFFIXES:
        legacy = stem.with_name(stem.name + suffix)
        if legacy.exists():
            log.warning("ignoring %s: pickled state files are never loaded (delete it); state is kept in %s",
                        legacy, _paths(stem)[0])


def state_error(path: str | os.PathLike[str], why: object) -> TorchRobustError:
    """The one-line error for a file at a state's path that cannot be used (and so is never overwritten)."""
    reason = " ".join(str(why).split()) or "unreadable"  # one line, whatever the underlying message was
    return TorchRobustError(f"state file {path} is not a usable torchrobust state ({reason}); delete it or choose "
                            "another output folder / state path")


def _read_document(st_path: Path) -> tuple[bytes, dict[str, Any], dict[str, Tensor]]:
    """The bytes, document and tensors of a state file; :func:`state_error` for anything that is not one."""
    try:
        data = st_path.read_bytes()
        if not data:
            raise ValueError("empty file")
        doc = _document(data)
    except IsADirectoryError as exc:
        raise state_error(st_path, "a folder") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise state_error(st_path, exc) from exc
    try:
        tensors = st_load(data)
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own SafetensorError for any malformed file
        raise state_error(st_path, f"its tensors are unreadable: {exc}") from exc
    if sorted(tensors) != sorted(doc["tensors"]):
        raise state_error(st_path, "it holds other tensors than its document lists")
    return data, doc, tensors


def _check_json_copy(json_path: Path) -> None:
    """An existing ``S.json`` must be a torchrobust state document (it is about to be overwritten); its content
    is otherwise never used."""
    if not json_path.exists() and not json_path.is_symlink():
        return
    try:
        _check_document(json.loads(json_path.read_bytes().decode("utf-8"), parse_constant=_no_constant))
    except IsADirectoryError as exc:
        raise state_error(json_path, "a folder") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise state_error(json_path, exc) from exc


def load_state(path_stem: str | os.PathLike[str],
               expected_fingerprint: Mapping[str, str]) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """``(tensors, meta)`` saved at ``path_stem`` when its fingerprint equals ``expected_fingerprint``.

    ``None`` when there is no state (fresh run) or a valid state of another model/data/config (one warning line;
    the caller recomputes and overwrites it). Anything else at the state's path (empty, truncated, not
    safetensors, not our document, tensors that do not match it, a planted pickle) raises
    :class:`TorchRobustError` naming the file and the fix, and is left untouched. Never unpickles anything; a
    legacy ``.pt``/``.pth`` beside the stem is ignored with a warning.
    """
    stem = state_stem(path_stem)
    _warn_legacy(stem)
    st_path, json_path = _paths(stem)
    _check_json_copy(json_path)
    if not st_path.exists() and not st_path.is_symlink():
        return None
    _, doc, tensors = _read_document(st_path)
    saved = doc["fingerprint"]
    expected = dict(expected_fingerprint)
    if saved != expected:
        differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        log.warning("state %s was written for another %s (fingerprint mismatch); recomputing and overwriting it",
                    st_path, "/".join(differ))
        return None
    return tensors, doc["meta"]


class StateStore:
    """One resumable state at ``path`` (stem, or the legacy ``x.pt`` spelling) bound to ``fingerprint``.

    ``load()`` → ``(tensors, meta)`` or ``None`` (see :func:`load_state`; a file that is not a usable state
    raises); ``save(tensors, meta)`` writes atomically; ``reject(why)`` raises :class:`TorchRobustError` when the
    caller finds a loaded state inconsistent with its own work (it is never silently overwritten). The path is
    validated on construction, before any work.
    """

    def __init__(self, path: str | os.PathLike[str], fingerprint: Mapping[str, str]) -> None:
        self.stem = check_state_path(path)
        self.fingerprint = dict(fingerprint)

    @property
    def path(self) -> Path:
        """The ``.safetensors`` file that holds the state."""
        return _paths(self.stem)[0]

    def load(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        return load_state(self.stem, self.fingerprint)

    def save(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Path:
        return save_state(self.stem, tensors, meta, self.fingerprint)

    def reject(self, why: str) -> NoReturn:
        """Raise the one-line error for a loaded state that does not match the caller's own work."""
        raise state_error(self.path, why)


def finite_seconds(seconds: Mapping[str, Any]) -> dict[str, float]:
    """``{name: float}`` of a loaded ``seconds`` mapping, dropping anything that is not a finite number."""
    return {str(k): float(v) for k, v in seconds.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
