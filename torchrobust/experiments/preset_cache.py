"""Resume for the reprogramming presets: every finished training and every evaluated row kept on disk.

A preset (:mod:`torchrobust.experiments.reprogramming`) is a chain of trainings and row evaluations that can take
hours (``profile="full"``, the default strong evaluation on 1000 images). :class:`PresetCache` stores each link as
soon as it is finished, under ``state_dir`` (default ``<out>/state``), as :mod:`torchrobust.resume` states
(safetensors + JSON, written atomically, never a pickle):

* ``train-<tag>-<key>`` - the weights after one training (``model.state_dict()``), its per-epoch history, and the
  fingerprint of the model it produced; a training that diverged is stored as such (the row stays ``diverged``).
  While a training runs, :func:`torchrobust.train.fit` writes its own resume state to ``fit-<tag>-<key>/`` at
  every epoch's end and every :data:`CHECKPOINT_EVERY` optimiser steps, so an interrupted training continues
  where it stopped, bit for bit (that folder is removed once the training is stored);
* ``row-<label>-<key>`` - one row's measurements (FGSM column, robust evaluation) and the seconds they took
  (``torchrobust paper adaptive`` keeps each of its (model, paradigm, ε) cells as such a row);
* ``rowstate-<label>-<key>-<part>`` - a row's own resumable state while it is evaluated (the adaptive suite's
  per-attack state), so an interrupted row continues inside its evaluation.

**What the key covers.** ``key`` is a SHA-256 over everything the result depends on: the seed, device, threads
and torch version, the library's own source code (:func:`code_fingerprint`: any change to ``torchrobust`` gives
new keys), and, for a training, a fingerprint of the training tensors, the model before it
(:func:`torchrobust.resume.fingerprint_model`: weights, structure, NRPM settings), the training's arguments and the
names of the trained parameters; for a row, the preset and its evaluation budgets (profile, ``n_test``,
``n_pgd``, robust ε, robust evaluation), a fingerprint of the test tensors, the model's fingerprint, the row's
label and whether it gets the robust evaluation. A stored entry is therefore reused only for exactly the computation
that produced it; anything else gets another key and is computed afresh (stale files are left, never read). Since
a reused training restores the very weights the rows were measured on, the model fingerprints chain: rerunning
the same command after an interruption - ``kill -9`` included - gives the same result, bit for bit, as the
uninterrupted run (tested), and only the unfinished work is computed.

A file at a state's path that is not a torchrobust state is refused with a one-line error naming it
(:func:`torchrobust.resume.load_state`); a state whose content contradicts its key (weights that do not give the
recorded fingerprint) is refused the same way, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from torchrobust.errors import TorchRobustError, TrainingDiverged
from torchrobust.resume import StateStore, fingerprint_config, fingerprint_model

__all__ = ["PresetCache", "code_fingerprint", "CHECKPOINT_EVERY"]

logger = logging.getLogger("torchrobust.experiments.reprogramming")

#: optimiser steps between two mid-epoch resume states of a training (plus one at every epoch's end)
CHECKPOINT_EVERY = 500

_PACKAGE = Path(__file__).resolve().parents[1]
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")  # fingerprint_model's hex SHA-256


def code_fingerprint(root: Path = _PACKAGE) -> str:
    """Hex SHA-256 of the library's Python sources (relative path and bytes of every ``*.py`` under ``root``, in
    sorted order): a cached result is never reused by another version of the code."""
    h = hashlib.sha256(b"torchrobust-code-v1\0")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        h.update(rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _slug(text: str) -> str:
    """A file-name-safe form of a row label or training tag (the key keeps names unique)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text.replace("λ", "lam").replace("ε", "eps")).strip("_")[:60] or "x"


def _dumps(obj: Any) -> str:
    """JSON text of a result (its key order kept: the state document's own JSON sorts keys)."""
    return json.dumps(obj, allow_nan=False)


def _loads(text: Any, kind: type, store: StateStore) -> Any:
    """The result stored by :func:`_dumps`; a state without one of type ``kind`` is refused (one line)."""
    try:
        value = json.loads(text, parse_constant=_no_constant) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, kind):
        store.reject(f"it holds no stored {kind.__name__} of results")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(name)


class PresetCache:
    """Finished trainings and rows of one preset run, stored under ``state_dir`` (see the module docstring).

    ``common`` (what every computation depends on: seed, device, threads, torch) is part of every key, with the
    code's fingerprint; a training's key adds ``train_data`` (a fingerprint of the training tensors), a row's adds
    ``eval_config`` (the preset, its budgets) and ``test_data``. So a training is reused by a rerun with another
    evaluation budget (e.g. a larger ``n_pgd``), and a row only by the same evaluation. ``reused`` lists what
    this run took from the state (``"train <tag>"``, ``"eval <label>"``), for the run's report.

    A run that only evaluates (its models come from elsewhere, e.g. Figure 6's certification cells) omits
    ``train_data``: its rows' keys are the same either way (they never include it), and :meth:`train` is refused.
    """

    def __init__(self, state_dir: str | Path, common: Mapping[str, Any], eval_config: Mapping[str, Any], *,
                 train_data: str | None = None, test_data: str) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        base = {"common": dict(common), "code": code_fingerprint()}
        self._train = None if train_data is None else {**base, "data": train_data}
        self._eval = {**base, "eval": dict(eval_config), "data": test_data}
        self.reused: list[str] = []

    # -------------------------------------------------------------------------------------------- trainings
    def train(self, model: nn.Module, tag: str, settings: Mapping[str, Any],
              run: Callable[[Path, bool], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Train ``model`` in place with ``run(fit_dir, resume)`` - which must call :func:`torchrobust.train.fit`
        with ``checkpoint_dir=fit_dir`` (``resume``: ``resume_from=fit_dir``) and return its history - unless this
        exact training was stored earlier: then its weights are loaded into ``model`` and its history returned.
        A stored divergence is raised again as :class:`TrainingDiverged`."""
        from torchrobust.train import resume as fit_resume

        if self._train is None:
            raise TorchRobustError(f"training {tag!r}: this PresetCache was made without train_data; pass "
                                   "train_data=<fingerprint of the training tensors> to cache trainings")
        before = fingerprint_model(model)
        key = fingerprint_config({**self._train, "kind": "train", "tag": tag, "model": before,
                                  "settings": dict(settings)})[:24]
        name = f"train-{_slug(tag)}-{key}"
        store = StateStore(self.dir / name, {"key": key})
        got = store.load()
        if got is not None:
            tensors, meta = got
            if meta.get("diverged"):
                self.reused.append(f"train {tag}")
                raise TrainingDiverged(str(meta["diverged"]), epoch=int(meta.get("epoch") or 0),
                                       batch=int(meta.get("batch") or 0))
            if set(tensors) != set(model.state_dict()):
                store.reject("its weights do not match the model's parameters")
            model.load_state_dict(tensors)
            if fingerprint_model(model) != meta.get("model"):
                store.reject("its weights do not give the model fingerprint it records")
            model.eval()
            self.reused.append(f"train {tag}")
            logger.info("%s: training finished earlier, weights loaded from %s", tag, store.path)
            return _loads(meta.get("history"), list, store)
        fit_dir = self.dir / f"fit-{_slug(tag)}-{key}"
        resume = fit_resume.has_state(fit_dir)
        if resume:
            logger.info("%s: continuing the interrupted training from %s", tag, fit_dir)
        try:
            history = run(fit_dir, resume)
        except TrainingDiverged as err:
            store.save({}, {"tag": tag, "diverged": str(err), "epoch": err.epoch, "batch": err.batch})
            fit_resume.clear_state(fit_dir)
            raise
        store.save(model.state_dict(), {"tag": tag, "model": fingerprint_model(model), "history": _dumps(history)})
        fit_resume.clear_state(fit_dir)
        return history

    # -------------------------------------------------------------------------------------------- rows
    def row_key(self, label: str, model: nn.Module | str, settings: Mapping[str, Any]) -> str:
        """The key of one row: this evaluation, ``model`` (by fingerprint), ``label`` and ``settings``; it names the
        row's state (:meth:`row`) and its own resumable states (:meth:`row_state_stem`). Fingerprinting hashes every
        weight, so compute the key once per row; rows of one model (e.g. one per ε) pass ``model`` as its
        :func:`~torchrobust.resume.fingerprint_model`, computed once - the same key as the model itself gives."""
        if isinstance(model, str):
            if not _FINGERPRINT.fullmatch(model):
                raise TorchRobustError(f"row_key {label!r}: model={model[:80]!r} is no model fingerprint; pass the "
                                       "nn.Module or torchrobust.resume.fingerprint_model(model) (64 hex digits)")
            fp = model
        else:
            fp = fingerprint_model(model)
        return fingerprint_config({**self._eval, "kind": "row", "label": label, "model": fp,
                                   "settings": dict(settings)})[:24]

    def row_state_stem(self, label: str, key: str, part: str) -> Path:
        """A path stem under the state folder for a row's own resumable state (e.g. the adaptive suite's per-attack
        state of one ε, ``part``), named by the row's ``key`` (:meth:`row_key`): an interrupted row continues inside
        its evaluation."""
        return self.dir / f"rowstate-{_slug(label)}-{key}-{_slug(part)}"

    def stored_row(self, label: str, key: str) -> tuple[dict[str, Any], float] | None:
        """``(measurements, seconds)`` of the row of this ``key`` (:meth:`row_key`) when it was evaluated earlier,
        else None; nothing is computed (a report of what is finished). A state at the row's path that is not this
        row's is refused with a one-line error."""
        store = StateStore(self._row_stem(label, key), {"key": key})
        got = store.load()
        if got is None:
            return None
        _, meta = got
        if meta.get("label") != label:
            store.reject(f"it holds no measurements of row {label!r}")
        values = _loads(meta.get("values"), dict, store)
        self.reused.append(f"eval {label}")
        logger.info("%s: evaluated earlier, measurements loaded from %s", label, store.path)
        return values, float(meta.get("seconds") or 0.0)

    def row(self, label: str, key: str, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
        """``(measurements, seconds)`` of one row: stored ones when the row of this ``key`` (:meth:`row_key`: the
        model by fingerprint, the label and the settings) was evaluated earlier (:meth:`stored_row`), else
        ``compute()`` timed and stored."""
        got = self.stored_row(label, key)
        if got is not None:
            return got
        t0 = time.perf_counter()
        values = compute()
        seconds = time.perf_counter() - t0
        StateStore(self._row_stem(label, key), {"key": key}).save(
            {}, {"label": label, "values": _dumps(values), "seconds": round(seconds, 3)})
        return values, seconds

    def _row_stem(self, label: str, key: str) -> Path:
        return self.dir / f"row-{_slug(label)}-{key}"
