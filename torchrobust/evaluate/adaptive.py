r"""Adaptive robustness evaluation: every attack a defence calls for, reported as the per-example worst case.

:func:`evaluate_adaptive` follows the evaluation guidelines of Carlini et al. 2019 ("On Evaluating Adversarial
Robustness", Sec. 5 checklist), Athalye, Carlini & Wagner 2018 (BPDA, EOT) and Tramèr et al. 2020 ("On Adaptive
Attacks to Adversarial Example Defenses"). It runs, in this order:

1. **white-box** — the reference AutoAttack's APGD-CE and APGD-T (``whitebox="autoattack"``, through
   :func:`torchrobust.attacks.autoattack.run_autoattack`) or, without AutoAttack (``whitebox="pgd"``), PGD with the
   cross-entropy and with the margin loss, each with restarts (``whitebox="auto"`` picks AutoAttack when it is
   installed and the threat model is ℓ∞/ℓ2/ℓ1);
2. **EOT** (only when the model's outputs are random: :func:`torchrobust.evaluate.checks.check_randomness`, or
   ``eot=True``) — PGD-CE on :class:`~torchrobust.attacks.wrappers.EOTModel` ``(model, eot_samples)``;
3. **BPDA** (only when some module declares a backward surrogate or has a generic one:
   :func:`torchrobust.attacks.wrappers.has_bpda_modules`) — PGD-CE and PGD-margin through
   :class:`~torchrobust.attacks.wrappers.BPDA` (straight-through backward, real forward);
4. **transfer** (only with ``base_model``, e.g. ``unforge(copy.deepcopy(m))``) — PGD-CE and PGD-margin crafted
   on the undefended base, evaluated on the defended model;
5. **black-box** — Square (``square_queries``) and SPSA, on the points that survived everything above.

Every attack produces per-example booleans ``correct[name]`` (True: still correctly classified; black-box
attacks are True on the points they did not need to attack). AutoAttack's sub-attacks are reported
cumulatively (``apgd-t`` = robust after APGD-CE and APGD-T), as the reference runs them. The reported robust
accuracy is the mean of ``worst = clean & AND_a correct[a]`` — the minimum over attacks per example, then the
average (Carlini et al. 2019, Sec. 5.1; AutoAttack). Each attack's result is also given a role (white-box,
black-box, transfer) so :func:`torchrobust.evaluate.checks.run_checks` can raise flags such as
``BLACKBOX_STRONGER`` / ``TRANSFER_STRONGER`` / ``ZERO_GRADIENTS``; ``reliable`` is True iff no flag was raised.

Long runs: ``progress=True`` shows a tqdm bar over attacks; ``state_path=`` (a stem: ``runs/adaptive`` writes
``runs/adaptive.safetensors`` + ``runs/adaptive.json``, see :mod:`torchrobust.resume`) saves the per-attack results
atomically after every attack, and a restarted call skips the finished attacks. The state is bound to a
fingerprint of the model (and ``base_model``), the data ``(x, y)`` and the configuration: a state written for
anything else, or a corrupt one, is never reused — it is recomputed with one warning line and overwritten.
Nothing is unpickled; the legacy spelling ``state_path="x.pt"`` means the stem ``x`` and an old pickled ``x.pt``
is ignored.

Example::

    >>> from torchrobust.evaluate.adaptive import evaluate_adaptive
    >>> res = evaluate_adaptive(forged_model, x, y, "Linf", 0.3, base_model=unforge(copy.deepcopy(forged_model)),
    ...                         state_path="runs/adaptive", progress=True)
    >>> res.robust_accuracy, res.reliable, [f["code"] for f in res.flags]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import TorchRobustError
from ..validation import eval_mode
from .metrics import correct as clean_correct

__all__ = ["AdaptiveResult", "evaluate_adaptive", "undefended_base"]

log = logging.getLogger(__name__)

_WHITEBOX = ("auto", "autoattack", "pgd")


@dataclass
class AdaptiveResult:
    """Per-example results of :func:`evaluate_adaptive`.

    ``clean[i]``: correct without attack. ``correct[a][i]``: still correct under attack ``a``. ``roles[a]``:
    ``"whitebox"``, ``"blackbox"`` or ``"transfer"``. ``worst``: the per-example worst case (reported).
    ``flags``: raised checks (dicts as in :meth:`torchrobust.evaluate.checks.Flag.to_dict`). ``skipped``: attacks not
    run and why.
    """

    threat: str
    eps: float
    clean: Tensor
    correct: dict[str, Tensor]
    roles: dict[str, str]
    flags: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def worst(self) -> Tensor:
        out = self.clean.clone()
        for c in self.correct.values():
            out &= c
        return out

    @property
    def robust_accuracy(self) -> float:
        return float(self.worst.float().mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean.float().mean())

    @property
    def reliable(self) -> bool:
        return not self.flags

    def accuracy(self, attack: str) -> float:
        """Robust accuracy under one attack alone."""
        return float((self.clean & self.correct[attack]).float().mean())

    def worst_of(self, role: str) -> Tensor:
        """Per-example AND over the attacks of one role (and clean)."""
        out = self.clean.clone()
        for name, c in self.correct.items():
            if self.roles.get(name) == role:
                out &= c
        return out

    def to_dict(self, per_example: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "threat": self.threat, "eps": self.eps, "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy, "reliable": self.reliable,
            "accuracy": {a: self.accuracy(a) for a in self.correct}, "roles": self.roles, "flags": self.flags,
            "seconds": self.seconds, "skipped": self.skipped, "config": self.config,
        }
        if per_example:
            out["clean"] = self.clean.tolist()
            out["worst"] = self.worst.tolist()
            out["correct"] = {a: c.tolist() for a, c in self.correct.items()}
        return out


# ------------------------------------------------------------------------------------------------ helpers
def _device(model: nn.Module, x: Tensor) -> torch.device:
    return next((p.device for p in model.parameters()), x.device)


def _under_attack(attack: Callable[[nn.Module, Tensor, Tensor], Tensor], attack_model: nn.Module,
                  eval_model: nn.Module, x: Tensor, y: Tensor, todo: Tensor, batch_size: int) -> Tensor:
    """``(N,)`` bool: True where ``eval_model`` is still right on ``attack(attack_model, x, y)``; only ``todo``
    (a bool mask) is attacked, the rest is returned True."""
    out = torch.ones(len(x), dtype=torch.bool)
    idx = todo.nonzero().squeeze(1)
    dev = _device(eval_model, x)
    for i in range(0, len(idx), batch_size):
        sel = idx[i:i + batch_size]
        xb, yb = x[sel].to(dev), y[sel].to(dev)
        x_adv = attack(attack_model, xb, yb)
        with torch.no_grad(), eval_mode(eval_model):  # every submodule's mode restored, not just the root's
            pred = eval_model(x_adv).argmax(1)
        out[sel] = (pred == yb).cpu()
    return out


def _restore(store: Any, jobs: list[str], n: int) -> dict[str, Any] | None:
    """The per-attack results of a saved state, or None (logged) when nothing consistent can be reused."""
    from ..resume import finite_seconds

    loaded = store.load()
    if loaded is None:
        return None
    tensors, meta = loaded
    done = meta.get("done")
    if not isinstance(done, list) or not all(isinstance(d, str) and d in jobs for d in done) \
            or len(set(done)) != len(done):
        store.discard("its list of finished attacks does not match this evaluation")
        return None
    correct = {}
    for name in done:
        t = tensors.get(f"correct/{name}")
        if t is None or t.dtype != torch.bool or tuple(t.shape) != (n,):
            store.discard(f"no per-example result of {name!r}")
            return None
        correct[name] = t
    seconds = finite_seconds(meta.get("seconds", {})) if isinstance(meta.get("seconds"), dict) else {}
    return {"done": list(done), "correct": correct, "seconds": {k: v for k, v in seconds.items() if k in correct}}


def _save_state(store: Any, state: dict[str, Any]) -> None:
    store.save({f"correct/{k}": v for k, v in state["correct"].items()},
               {"done": state["done"], "seconds": state["seconds"]})


# ------------------------------------------------------------------------------------------------ main entry
def evaluate_adaptive(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: str = "Linf",
    eps: float = 0.3,
    base_model: nn.Module | None = None,
    *,
    whitebox: str = "auto",
    steps: int = 100,
    restarts: int = 2,
    eot: bool | str = "auto",
    eot_samples: int = 20,
    bpda: bool | str = "auto",
    transfer: bool = True,
    blackbox: bool = True,
    square_queries: int = 5000,
    spsa_steps: int = 100,
    spsa_samples: int = 128,
    seed: int = 0,
    batch_size: int = 256,
    state_path: str | Path | None = None,
    checks: bool = True,
    n_check: int = 64,
    progress: bool = False,
) -> AdaptiveResult:
    """Adaptive evaluation of ``model`` on ``(x, y)`` at ``threat``/``eps``; see the module docstring.

    Args:
        model: the defended model (logits on [0, 1] inputs).
        x, y: clean inputs and int64 labels (kept on their device; batches are moved to the model's device).
        threat, eps: the threat model (``"Linf"``, ``"L2"``, ``"L1"``) and budget.
        base_model: the undefended model for the transfer attack (same weights without the defence).
        whitebox: ``"auto"``, ``"autoattack"`` (APGD-CE + APGD-T of the reference AutoAttack) or ``"pgd"``.
        steps, restarts: PGD iterations and restarts of our own PGD runs (white-box fallback, EOT, BPDA, transfer).
        eot: ``"auto"`` (when outputs are random), True or False; ``eot_samples`` forward passes per gradient.
        bpda: ``"auto"`` (when some module has a surrogate), True or False.
        transfer: run the transfer attack when ``base_model`` is given.
        blackbox: run Square and SPSA on the survivors; ``square_queries``, ``spsa_steps``, ``spsa_samples``.
        seed: seed of every randomised attack.
        batch_size: examples per attack call.
        state_path: stem of the resumable state (``<stem>.safetensors`` + ``<stem>.json``, rewritten atomically
            after each attack; a trailing ``.pt`` is dropped). Reused only for the same model, data and
            configuration (:mod:`torchrobust.resume`); validated before any attack runs.
        checks: run :func:`torchrobust.evaluate.checks.run_checks` on the results (``n_check`` examples for the
            model probes).
        progress: tqdm bar over the attacks.
    """
    from .. import attacks as A
    from ..attacks import autoattack as AA
    from ..attacks.spsa import SPSA
    from ..attacks.square import Square
    from ..attacks.wrappers import BPDA, EOTModel, has_bpda_modules

    if whitebox not in _WHITEBOX:
        raise TorchRobustError(f"unknown whitebox {whitebox!r}; valid: {', '.join(_WHITEBOX)}")
    tm = A.get_threat(threat, eps)
    if state_path is not None:
        from ..resume import check_state_path

        check_state_path(state_path)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y) or len(x) == 0:
        raise TorchRobustError("x and y must be non-empty tensors of equal length; pass (N, ...) inputs, (N,) labels")
    x, y = x.detach(), y.detach()
    clean = clean_correct(model, x, y, batch_size).cpu()
    dev = _device(model, x)
    xs = x[:n_check].to(dev)

    # --- what the model needs
    use_aa = whitebox == "autoattack"
    if whitebox == "auto":
        try:
            AA.reference_autoattack()
            use_aa = x.dim() == 4
        except TorchRobustError:
            use_aa = False
    randomized = False
    if eot == "auto":
        from .checks import check_randomness

        randomized = check_randomness(model, xs) is not None
    else:
        randomized = bool(eot)
    if bpda == "auto":
        use_bpda = has_bpda_modules(model)
    else:
        use_bpda = bool(bpda)

    config = {"threat": tm.name, "eps": float(tm.eps), "whitebox": "autoattack" if use_aa else "pgd",
              "steps": steps, "restarts": restarts, "eot": randomized, "eot_samples": eot_samples, "bpda": use_bpda,
              "transfer": bool(transfer and base_model is not None), "blackbox": blackbox,
              "square_queries": square_queries, "spsa_steps": spsa_steps, "spsa_samples": spsa_samples,
              "seed": seed, "batch_size": batch_size, "n_examples": int(len(x))}

    def pgd(loss: str) -> Any:
        return A.PGD(tm, steps=steps, restarts=restarts, loss=loss, seed=seed)

    # --- the plan: (name, role, run(todo_mask) -> correct)
    jobs: list[tuple[str, str, Callable[[Tensor], Tensor], bool]] = []  # name, role, fn, survivors_only
    if use_aa:
        # both sub-attacks come from one reference run; the second job reuses the first's result via the cache
        cache: dict[str, Tensor] = {}

        def aa_both(todo: Tensor) -> dict[str, Tensor]:
            if not cache and not bool(todo.any()):  # nothing correctly classified: nothing to attack
                cache.update({k: torch.ones(len(x), dtype=torch.bool) for k in ("apgd-ce", "apgd-t")})
            if not cache:
                res = AA.run_autoattack(model, x[todo], y[todo], tm, version="standard",
                                                  attacks_to_run=["apgd-ce", "apgd-t"], seed=seed,
                                                  batch_size=batch_size)
                for k, v in res.robust_after.items():
                    full = torch.ones(len(x), dtype=torch.bool)
                    full[todo.nonzero().squeeze(1)] = v
                    cache[k] = full
            return cache

        jobs.append(("apgd-ce", "whitebox", lambda todo: aa_both(todo)["apgd-ce"], False))
        jobs.append(("apgd-t", "whitebox", lambda todo: aa_both(todo)["apgd-t"], False))
    else:
        jobs.append(("pgd-ce", "whitebox",
                     lambda todo: _under_attack(pgd("ce"), model, model, x, y, todo, batch_size), False))
        jobs.append(("pgd-margin", "whitebox",
                     lambda todo: _under_attack(pgd("margin"), model, model, x, y, todo, batch_size), False))
    if randomized:
        jobs.append(("eot-pgd-ce", "whitebox", lambda todo: _under_attack(
            pgd("ce"), EOTModel(model, eot_samples), model, x, y, todo, batch_size), False))
    if use_bpda:
        target = EOTModel(BPDA(model), eot_samples) if randomized else BPDA(model)
        for loss in ("ce", "margin"):
            jobs.append((f"bpda-pgd-{loss}", "whitebox", (lambda lo: lambda todo: _under_attack(
                pgd(lo), target, model, x, y, todo, batch_size))(loss), False))
    if transfer and base_model is not None:
        for loss in ("ce", "margin"):
            jobs.append((f"transfer-pgd-{loss}", "transfer", (lambda lo: lambda todo: _under_attack(
                pgd(lo), base_model, model, x, y, todo, batch_size))(loss), False))
    skipped: dict[str, str] = {}
    if blackbox:
        if x.dim() == 4 and tm.name in ("Linf", "L2"):
            jobs.append(("square", "blackbox", lambda todo: _under_attack(
                Square(tm, n_queries=square_queries, seed=seed), model, model, x, y, todo, batch_size), True))
        else:
            skipped["square"] = "needs (N, C, H, W) inputs and an Linf or L2 threat"
        jobs.append(("spsa", "blackbox", lambda todo: _under_attack(
            SPSA(tm, steps=spsa_steps, n_samples=spsa_samples, seed=seed), model, model, x, y, todo,
            batch_size), True))
    if not use_bpda:
        skipped["bpda"] = "no module declares a backward surrogate"
    if not randomized:
        skipped["eot"] = "the model's outputs are deterministic"
    if base_model is None:
        skipped["transfer"] = "no base_model given"

    # --- resume: only a state with the same model, base model, data and configuration is reused
    store = None
    state: dict[str, Any] = {"done": [], "correct": {}, "seconds": {}}
    if state_path is not None:
        from ..resume import StateStore, fingerprint_model, make_fingerprint

        extra = {"base_model": fingerprint_model(base_model)} if config["transfer"] else {}
        store = StateStore(state_path, make_fingerprint(model, (x, y), {"job": "evaluate_adaptive", **config},
                                                        **extra))
        saved = _restore(store, [name for name, _, _, _ in jobs], len(x))
        if saved is not None:
            state = saved
            log.info("resuming adaptive evaluation from %s (done: %s)", store.path, ", ".join(state["done"]) or "none")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="adaptive", leave=False, initial=len(state["done"]))
    roles = {name: role for name, role, _, _ in jobs}
    try:
        for name, _role, fn, survivors_only in jobs:
            if name in state["done"]:
                continue
            todo = clean.clone()
            if survivors_only:
                for c in state["correct"].values():
                    todo &= c
            t0 = time.perf_counter()
            result = fn(todo)
            state["correct"][name] = result.cpu() | ~todo
            state["seconds"][name] = time.perf_counter() - t0
            state["done"].append(name)
            if store is not None:
                _save_state(store, state)
            acc = float((clean & state["correct"][name]).float().mean())
            log.info("adaptive: %s robust accuracy %.2f%% (%.1f s)", name, 100 * acc, state["seconds"][name])
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{name} acc={acc:.3f}")
    finally:
        if bar is not None:
            bar.close()

    correct = {name: state["correct"][name] for name, _, _, _ in jobs}
    res = AdaptiveResult(threat=tm.name, eps=float(tm.eps), clean=clean, correct=correct, roles=roles,
                         seconds=dict(state["seconds"]), skipped=skipped, config=config)
    if checks:
        from .checks import run_checks

        mapping: dict[str, Any] = {
            "model": model, "x": xs, "y": y[:n_check].to(dev), "correct": {k: clean & v for k, v in correct.items()},
            "roles": roles, "bpda_evaluated": use_bpda,
        }
        res.flags = [f.to_dict() for f in run_checks(mapping)]
    else:  # the cheap NaN/inf check runs regardless: such a model's numbers are never reliable
        from .checks import check_finite

        finite = check_finite(model, xs)
        res.flags = [finite.to_dict()] if finite is not None else []
    return res


def undefended_base(model: nn.Module) -> nn.Module | None:
    """The same weights without the defences torchrobust applied (NRPM reprogramming, forged thresholds), as a
    copy — the source model of the transfer attack. ``None`` when ``model`` carries no such defence."""
    import copy

    from ..forge import is_forged, unforge
    from ..nn import NRPMConv2d, NRPMLinear
    from ..reprogram import unreprogram

    has_nrpm = any(isinstance(m, (NRPMLinear, NRPMConv2d)) for m in model.modules())
    if not has_nrpm and not is_forged(model):
        return None
    base = copy.deepcopy(model)
    if is_forged(base):
        base = unforge(base, inplace=True)
    if has_nrpm:
        base = unreprogram(base)
    return base.eval()
