r"""Adapter to the reference AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", Sec. 4: APGD-CE → APGD-T → FAB-T → Square on the points still
robust).

The reference implementation is used as is — the PyPI package ``pyautoattack`` (``import pyautoattack``; the
package RobustBench 1.1.1 depends on), or fra31's ``autoattack`` when that is what is installed. It is an
optional dependency (``pip install pyautoattack``); without it the adapter raises a one-line
:class:`~torchrobust.errors.TorchRobustError`.

* :func:`run_autoattack` → :class:`AutoAttackResult`: per-example clean and robust booleans, and per sub-attack
  the cumulative robust booleans (``robust_after``) and the examples it broke (``broken_by``).
* :class:`AutoAttack` — the same as an :class:`~torchrobust.attacks.Attack` returning ``x_adv`` (so it has the
  contract's eval-mode handling and budget check).

**Same numbers as calling AutoAttack directly.** The adapter runs the sub-attacks one at a time, each through the
reference ``run_standard_evaluation`` on the points still robust, in their original order and with the same
``batch_size``. The reference implementation does exactly this internally and re-seeds torch's RNG with ``seed``
before every batch of every sub-attack, so the batches, seeds and results are identical to one direct call with
the same seed (``tests/test_autoattack.py`` checks equality per example). Running one sub-attack per call is what
gives the per-attack breakdown and the resumable state (``state_path``, a stem: ``<stem>.safetensors`` +
``<stem>.json``, written atomically after every sub-attack through :mod:`torchrobust.resume`; a restarted run skips
the finished ones). The state is reused only for the same model, data and configuration (fingerprints); a state of
another model/data/configuration is recomputed with one warning line and overwritten; a corrupt, empty or foreign
file at the state's path is a one-line :class:`TorchRobustError` and is left as it is. Nothing is ever unpickled:
the legacy spelling ``state_path="x.pt"`` means the stem ``x``, and an old pickled ``x.pt`` is ignored.

Other differences from calling the reference code directly, all on the safe side:

* ``seed=0`` by default (the reference uses ``time.time()`` when ``seed=None``, so runs are not reproducible);
* torch's global RNG state is saved and restored around the run (the reference re-seeds it globally);
* nothing is printed: the reference logger (``"auto-attack"``) is a ``logging`` logger, and any stray ``print``
  of the reference code is redirected to this module's logger at DEBUG level;
* the model is put in eval mode for the run and every submodule's mode is restored afterwards;
* the result is checked: every ``x_adv`` must lie in ``ball(x, ε) ∩ [0, 1]`` (tolerance 1e-5 relative, the float32
  rounding of the reference projections), else :class:`~torchrobust.attacks.AttackBudgetError`.

Versions: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square 5000 queries; ℓ1 with ``use_largereps``), ``"rand"``
(APGD-CE, APGD-DLR with EOT 20, for randomised defences), ``"plus"``, and ``"custom"`` with ``attacks_to_run``
(names ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``, ``square``). For ``version="standard"``,
``attacks_to_run`` may name a *subset* of the standard attacks (keeping the standard hyper-parameters), e.g.
``["apgd-ce", "apgd-t"]`` for a quick run.

Example::

    >>> from torchrobust.attacks import run_autoattack
    >>> res = run_autoattack(model, x, y, threat="Linf", eps=8 / 255, version="standard", seed=0)
    >>> res.robust_accuracy, {k: float(v.float().mean()) for k, v in res.robust_after.items()}
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from torchrobust.attacks.base import Attack, AttackBudgetError, register
from torchrobust.attacks.threat import ThreatModel, ThreatName
from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_positive_int, eval_mode, model_device

__all__ = ["AutoAttack", "AutoAttackResult", "run_autoattack", "reference_autoattack", "AA_ATTACKS"]

logger = logging.getLogger(__name__)

#: Sub-attack names understood by the reference implementation.
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_VERSIONS = ("standard", "rand", "plus", "custom")


def reference_autoattack() -> ModuleType:
    """The installed reference AutoAttack module (``pyautoattack``, else ``autoattack``)."""
    for name in ("pyautoattack", "autoattack"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TorchRobustError(
        "the AutoAttack adapter needs the reference AutoAttack; install it: pip install pyautoattack"
    )


class _LogStream(io.TextIOBase):
    """A text stream that forwards complete lines to a logger (for the reference code's ``print`` calls)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip():
                self._log.debug("%s", line)
        return len(s)


@contextlib.contextmanager
def _quiet_eval(model: nn.Module, device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices), contextlib.redirect_stdout(_LogStream(logger)):
        yield


def _threat_name(threat: str | ThreatModel) -> str:
    try:
        return ThreatName(threat.name if isinstance(threat, ThreatModel) else str(threat)).value
    except ValueError:
        raise TorchRobustError(f"AutoAttack supports threat Linf, L2 or L1, got {threat!r}") from None


def _build(mod: ModuleType, model: nn.Module, norm: str, eps: float, version: str,
           attacks: Sequence[str] | None, seed: int | None, device: torch.device, verbose: bool) -> Any:
    """Construct the reference ``AutoAttack`` object (pyautoattack or fra31 signature)."""
    params = inspect.signature(mod.AutoAttack.__init__).parameters
    if "attacks" in params:  # pyautoattack >= 0.2
        aa = mod.AutoAttack(model, norm=norm, eps=eps, seed=seed, version=version, device=device,
                            attacks=list(attacks) if version == "custom" else None)
    else:  # fra31/auto-attack
        kw: dict[str, Any] = {"norm": norm, "eps": eps, "seed": seed, "version": version, "device": device,
                              "verbose": verbose}
        if version == "custom":
            kw["attacks_to_run"] = list(attacks or [])
        aa = mod.AutoAttack(model, **kw)
    aa.verbose = verbose
    return aa


def _run_reference(aa: Any, x: Tensor, y: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """One reference ``run_standard_evaluation``: ``(x_adv, labels predicted on x_adv)``."""
    params = inspect.signature(aa.run_standard_evaluation).parameters
    if "batch_size" in params:
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    else:  # fra31: labels only on request
        x_adv, y_adv = aa.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)
    return x_adv, y_adv


def _cap_targets(aa: Any, n_classes: int) -> None:
    """Targeted sub-attacks use ``min(9, n_classes - 1)`` target classes (AutoAttack issue #110: the reference
    crashes with fewer than 10 classes). With 10 or more classes nothing changes."""
    for name in ("apgd_targeted", "fab"):
        sub = getattr(aa, name, None)
        if sub is not None and getattr(sub, "n_target_classes", 0) > n_classes - 1:
            logger.info("AutoAttack %s: %d target classes capped to %d (model has %d classes)", name,
                        sub.n_target_classes, n_classes - 1, n_classes)
            sub.n_target_classes = max(n_classes - 1, 1)


@dataclass
class AutoAttackResult:
    """Per-example results of :func:`run_autoattack`.

    ``clean[i]``: correct without attack; ``robust[i]``: correct after every sub-attack (the AutoAttack robust
    flag); ``robust_after[a]``: robust after the sub-attacks up to and including ``a``; ``broken_by[a]``: examples
    first broken by ``a``; ``x_adv``: the adversarial example of every broken point (``x`` elsewhere).
    """

    attacks: list[str]
    clean: Tensor
    robust: Tensor
    robust_after: dict[str, Tensor]
    broken_by: dict[str, Tensor]
    x_adv: Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    def to_dict(self, per_example: bool = True) -> dict[str, Any]:
        """JSON-serialisable summary (``x_adv`` excluded)."""
        out: dict[str, Any] = {
            "attacks": self.attacks, "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_after": {a: float(v.float().mean()) for a, v in self.robust_after.items()},
            "seconds": self.seconds, "config": self.config,
        }
        if per_example:
            out["clean"] = self.clean.tolist()
            out["robust"] = self.robust.tolist()
        return out


_PER_ATTACK = ("robust_after", "broken_by")


def _save_state(store: Any, state: dict[str, Any]) -> None:
    tensors = {k: state[k] for k in ("clean", "robust", "x_adv")}
    for group in _PER_ATTACK:
        tensors.update({f"{group}/{a}": v for a, v in state[group].items()})
    store.save(tensors, {"done": state["done"], "seconds": state["seconds"]})


def _restore(store: Any, attacks: list[str], x: Tensor) -> dict[str, Any] | None:
    """A saved state as the run's working dict; None when there is none to reuse (absent, or another
    model/data/configuration, logged). A state with this run's fingerprint that does not fit it raises."""
    from torchrobust.resume import finite_seconds

    loaded = store.load()
    if loaded is None:
        return None
    tensors, meta = loaded
    done = meta.get("done")
    if not isinstance(done, list) or done != attacks[:len(done)]:
        store.reject("its finished sub-attacks are not a prefix of this run's")
    n = len(x)
    want = {"clean": (torch.bool, (n,)), "robust": (torch.bool, (n,)), "x_adv": (x.dtype, tuple(x.shape))}
    want.update({f"{g}/{a}": (torch.bool, (n,)) for g in _PER_ATTACK for a in done})
    for k, (dtype, shape) in want.items():
        t = tensors.get(k)
        if t is None or t.dtype != dtype or tuple(t.shape) != shape:
            store.reject(f"tensor {k!r} is missing or has the wrong dtype/shape")
    seconds = finite_seconds(meta["seconds"]) if isinstance(meta.get("seconds"), dict) else {}
    return {"done": list(done), "clean": tensors["clean"], "robust": tensors["robust"], "x_adv": tensors["x_adv"],
            **{g: {a: tensors[f"{g}/{a}"] for a in done} for g in _PER_ATTACK},
            "seconds": {a: seconds[a] for a in done if a in seconds}}


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: str | ThreatModel = "Linf",
    eps: float | None = None,
    *,
    version: str = "standard",
    attacks_to_run: Sequence[str] | None = None,
    seed: int | None = 0,
    batch_size: int = 250,
    state_path: str | Path | None = None,
    verbose: bool = False,
) -> AutoAttackResult:
    """Run the reference AutoAttack on ``(x, y)`` and return per-example and per-sub-attack results.

    Args:
        model: logits model on [0, 1] inputs (normalisation inside).
        x, y: clean inputs ``(N, C, H, W)`` in [0, 1] and int64 labels ``(N,)``; the model's device is used.
        threat: ``"Linf"``, ``"L2"``, ``"L1"`` or a ThreatModel (then ``eps`` defaults to its radius).
        eps: the budget.
        version: ``"standard"``, ``"rand"``, ``"plus"`` or ``"custom"``.
        attacks_to_run: sub-attacks for ``"custom"``, or a subset of the version's attacks.
        seed: the reference seed (``None`` is refused: the reference would seed from the clock).
        batch_size: the reference batch size (part of what makes results reproducible).
        state_path: stem of the resumable state (``<stem>.safetensors`` + ``<stem>.json``; a trailing ``.pt`` is
            dropped), updated atomically after every sub-attack; reused only for the same model, data and
            configuration (:mod:`torchrobust.resume`).
        verbose: let the reference logger emit its DEBUG progress lines.
    """
    from torchrobust.attacks.threat import get_threat

    norm = _threat_name(threat)
    if eps is None and isinstance(threat, ThreatModel):
        eps = threat.eps
    tm = get_threat(norm, eps)
    if version not in _VERSIONS:
        raise TorchRobustError(f"unknown AutoAttack version {version!r}; valid: {', '.join(_VERSIONS)}")
    if seed is None or isinstance(seed, bool) or not isinstance(seed, int):
        raise TorchRobustError(f"seed must be an int (got {seed!r}); the reference AutoAttack seeds from the clock "
                               "otherwise, which is not reproducible")
    check_positive_int(batch_size, "batch_size", 250)
    if attacks_to_run is not None:
        bad = [a for a in attacks_to_run if a not in AA_ATTACKS]
        if bad or not attacks_to_run:
            raise TorchRobustError(f"unknown AutoAttack sub-attack(s) {bad or attacks_to_run}; valid: "
                                   f"{', '.join(AA_ATTACKS)}")
    if version == "custom" and not attacks_to_run:
        raise TorchRobustError("version='custom' needs attacks_to_run, e.g. ['apgd-ce', 'apgd-t']")
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise TorchRobustError(f"AutoAttack needs image batches shaped (N, C, H, W), got {getattr(x, 'shape', x)}")
    if not isinstance(y, Tensor) or y.shape != (len(x),) or len(x) == 0:
        raise TorchRobustError(f"AutoAttack needs N >= 1 inputs and N labels, got {len(x)} inputs and labels shaped "
                               f"{tuple(getattr(y, 'shape', ()))}; pass a non-empty batch")
    if state_path is not None:
        from torchrobust.resume import check_state_path

        check_state_path(state_path)
    mod = reference_autoattack()
    device = model_device(model, x.device)
    x_dev, y_dev = x.detach().to(device), y.detach().to(device)
    config = {"threat": norm, "eps": float(tm.eps), "version": version, "seed": seed, "batch_size": batch_size,
              "n_examples": int(len(x)), "reference": mod.__name__,
              "reference_version": getattr(mod, "__version__", "")}

    with _quiet_eval(model, device):
        aa = _build(mod, model, norm, float(tm.eps), version, attacks_to_run, seed, device, verbose)
        attacks = list(aa.attacks_to_run)
        if attacks_to_run is not None and version != "custom":
            extra = [a for a in attacks_to_run if a not in attacks]
            if extra:
                raise TorchRobustError(f"{extra} are not part of version={version!r} ({', '.join(attacks)}); "
                                       "use version='custom'")
            attacks = [a for a in attacks if a in attacks_to_run]
        config["attacks"] = attacks
        state: dict[str, Any] | None = None
        store = None
        if state_path is not None:
            from torchrobust.resume import StateStore, make_fingerprint

            store = StateStore(state_path, make_fingerprint(model, (x, y), {"job": "run_autoattack", **config}))
            state = _restore(store, attacks, x)
            if state is not None:
                logger.info("resuming AutoAttack from %s (done: %s)", store.path, ", ".join(state["done"]) or "none")
        from torchrobust.validation import probe_logits

        n_classes = probe_logits(model, x_dev)  # a wrong input shape or dtype is a one-line error naming the fix
        _cap_targets(aa, n_classes)
        if state is None:
            with torch.no_grad():
                pred = torch.cat([model(x_dev[i:i + batch_size]).argmax(1) for i in range(0, len(x_dev), batch_size)])
            clean = (pred == y_dev).cpu()
            state = {"config": config, "done": [], "clean": clean, "robust": clean.clone(),
                     "robust_after": {}, "broken_by": {}, "x_adv": x.detach().cpu().clone(), "seconds": {}}
        robust: Tensor = state["robust"]
        x_adv: Tensor = state["x_adv"]
        for attack in attacks:
            if attack in state["done"]:
                continue
            t0 = time.perf_counter()
            idx = robust.nonzero().squeeze(1)
            broken = torch.zeros_like(robust)
            if idx.numel() > 0:
                aa.attacks_to_run = [attack]
                xa, ya = _run_reference(aa, x_dev[idx.to(device)], y_dev[idx.to(device)], batch_size)
                hit = (ya != y_dev[idx.to(device)]).cpu()
                broken[idx[hit]] = True
                robust = robust & ~broken
                x_adv[idx[hit]] = xa[hit.to(xa.device)].detach().cpu().to(x_adv.dtype)
            state["robust"], state["x_adv"] = robust, x_adv
            state["robust_after"][attack] = robust.clone()
            state["broken_by"][attack] = broken
            state["seconds"][attack] = time.perf_counter() - t0
            state["done"].append(attack)
            logger.info("AutoAttack %s: robust accuracy %.2f%% (%.1f s)", attack, 100 * float(robust.float().mean()),
                        state["seconds"][attack])
            if store is not None:
                _save_state(store, state)
    ok = tm.contains(x_adv, x.detach().cpu(), tol=1e-5)
    if not bool(ok.all()):
        raise AttackBudgetError(f"reference AutoAttack returned {int((~ok).sum())} point(s) outside {tm} ∩ [0,1]")
    return AutoAttackResult(attacks=attacks, clean=state["clean"], robust=robust,
                            robust_after=dict(state["robust_after"]), broken_by=dict(state["broken_by"]),
                            x_adv=x_adv.to(x.device), seconds=dict(state["seconds"]), config=config)


class AutoAttack(Attack):
    """The reference AutoAttack as a torchrobust :class:`~torchrobust.attacks.Attack` (returns ``x_adv``); see
    :func:`run_autoattack` for the arguments and the module docstring for the guarantees."""

    freeze_parameters = False  # the reference differentiates on its own (``.backward()``): run it as it is

    def __init__(
        self,
        threat: str | ThreatModel = "Linf",
        eps: float | None = None,
        version: str = "standard",
        attacks_to_run: Sequence[str] | None = None,
        seed: int = 0,
        batch_size: int = 250,
    ) -> None:
        if eps is None and not isinstance(threat, ThreatModel):
            eps = 0.3
        super().__init__(_threat_name(threat) if not isinstance(threat, ThreatModel) else threat, eps)
        _threat_name(self.threat)
        if version not in _VERSIONS:
            raise TorchRobustError(f"unknown AutoAttack version {version!r}; valid: {', '.join(_VERSIONS)}")
        self.version = version
        self.attacks_to_run = list(attacks_to_run) if attacks_to_run is not None else None
        self.seed = seed
        self.batch_size = check_positive_int(batch_size, "batch_size", 250)
        #: the :class:`AutoAttackResult` of the latest call (per-sub-attack breakdown)
        self.last_result: AutoAttackResult | None = None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        res = run_autoattack(model, x, y, self.threat, version=self.version, attacks_to_run=self.attacks_to_run,
                             seed=0 if self.seed is None else self.seed, batch_size=self.batch_size)
        self.last_result = res
        return res.x_adv


register("autoattack", AutoAttack)
register("aa", AutoAttack)
