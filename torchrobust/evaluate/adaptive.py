r"""Adaptive robustness evaluation: every attack a defence calls for, reported as the per-example worst case.

:func:`evaluate_adaptive` follows the evaluation guidelines of Carlini et al. 2019 ("On Evaluating Adversarial
Robustness", Sec. 5 checklist), Athalye, Carlini & Wagner 2018 (BPDA, EOT) and Tramèr et al. 2020 ("On Adaptive
Attacks to Adversarial Example Defenses"). It runs, in this order:

1. **white-box** — APGD-CE, then APGD-T on its survivors: the reference AutoAttack's (``whitebox="autoattack"``,
   through :func:`torchrobust.attacks.autoattack.run_autoattack`) or ours (``whitebox="apgd"``,
   :mod:`torchrobust.attacks.apgd`, matched to the reference in ``tests/test_apgd.py``); or PGD with the
   cross-entropy and with the margin loss, each with restarts (``whitebox="pgd"``). ``whitebox="auto"`` picks the
   reference when it is installed and the inputs are images, else ours;
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
black-box, transfer, BPDA) so :func:`torchrobust.evaluate.checks.run_checks` can raise flags such as
``BLACKBOX_STRONGER`` / ``TRANSFER_STRONGER`` / ``BPDA_STRONGER`` / ``ZERO_GRADIENTS``; ``reliable`` is True iff no
flag was raised.

Every attack is a job of one plan run by the evaluation engine (:mod:`torchrobust.evaluate.engine`).
Long runs: ``progress=True`` shows a tqdm bar over attacks; ``state_path=`` (a stem: ``runs/adaptive`` writes
``runs/adaptive.safetensors`` + ``runs/adaptive.json``, see :mod:`torchrobust.resume`) saves the per-example results
atomically after every batch, and a restarted call skips the finished batches and attacks. The state is bound to a
fingerprint of the model (and ``base_model``), the data ``(x, y)`` and the configuration: a state written for
anything else is never reused — it is recomputed with one warning line and overwritten; a corrupt, empty or
foreign file at the state's path is a one-line :class:`~torchrobust.errors.TorchRobustError`, left untouched.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import TorchRobustError
from ..validation import model_device
from .engine import Job, run_plan

__all__ = ["AdaptiveResult", "evaluate_adaptive", "undefended_base"]

log = logging.getLogger(__name__)

_WHITEBOX = ("auto", "autoattack", "apgd", "pgd")


def _fraction(mask: Tensor) -> float:
    """The fraction of ``True`` entries of a per-example boolean mask."""
    return float(mask.float().mean())


@dataclass
class AdaptiveResult:
    """Per-example results of :func:`evaluate_adaptive`.

    ``clean[i]``: correct without attack. ``correct[a][i]``: still correct under attack ``a``. ``roles[a]``:
    ``"whitebox"``, ``"blackbox"``, ``"transfer"`` or ``"bpda"``. ``worst``: the per-example worst case (reported).
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
        """Worst-case robust accuracy: the fraction of examples that every attack of the suite leaves correct."""
        return _fraction(self.worst)

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the unperturbed examples."""
        return _fraction(self.clean)

    @property
    def reliable(self) -> bool:
        return not self.flags

    def accuracy(self, attack: str) -> float:
        """Robust accuracy under one attack alone."""
        return _fraction(self.clean & self.correct[attack])

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
        whitebox: ``"autoattack"`` (APGD-CE + APGD-T of the reference AutoAttack), ``"apgd"`` (our APGD-CE +
            APGD-T, :mod:`torchrobust.attacks.apgd`), ``"pgd"`` (PGD-CE + PGD-margin with restarts) or ``"auto"``
            (the reference when it is installed and inputs are images, else ours).
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

    Every attack is a job of one plan run by the evaluation engine (:func:`torchrobust.evaluate.engine.run_plan`),
    which also owns the state: it is saved after every batch, so a killed run resumes mid-attack.
    """
    from .. import attacks as A
    from ..attacks import autoattack as AA
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
    dev = model_device(model, x.device)
    xs = x[:n_check].to(dev)

    # --- what the model needs
    wb = whitebox
    if whitebox == "auto":
        try:
            AA.reference_autoattack()
            wb = "autoattack" if x.dim() == 4 else "apgd"
        except TorchRobustError:
            wb = "apgd"
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

    config = {"threat": tm.name, "eps": float(tm.eps), "whitebox": wb,
              "steps": steps, "restarts": restarts, "eot": randomized, "eot_samples": eot_samples, "bpda": use_bpda,
              "transfer": bool(transfer and base_model is not None), "blackbox": blackbox,
              "square_queries": square_queries, "spsa_steps": spsa_steps, "spsa_samples": spsa_samples,
              "seed": seed, "batch_size": batch_size, "n_examples": int(len(x))}

    def pgd(loss: str, name: str, source: str | None = None, role: str = "whitebox") -> Job:
        return Job("pgd", tm.name, float(tm.eps), kwargs={"steps": steps, "restarts": restarts, "loss": loss,
                                                          "seed": seed}, name=name, source=source, role=role)

    # --- the plan, run by the evaluation engine
    jobs: list[Job] = []
    sources: dict[str, nn.Module] = {}
    if wb == "autoattack":  # the reference's sub-attacks as two jobs: APGD-T on APGD-CE's survivors, as it runs them
        for sub in ("apgd-ce", "apgd-t"):
            jobs.append(Job("autoattack", tm.name, float(tm.eps), kwargs={
                "version": "standard", "attacks_to_run": [sub], "seed": seed, "batch_size": batch_size},
                name=sub, survivors_only=sub == "apgd-t"))
    elif wb == "apgd":
        jobs.append(Job("apgd-ce", tm.name, float(tm.eps), kwargs={"seed": seed}))
        jobs.append(Job("apgd-t", tm.name, float(tm.eps), kwargs={"seed": seed}, survivors_only=True))
    else:
        jobs += [pgd("ce", "pgd-ce"), pgd("margin", "pgd-margin")]
    if randomized:
        sources["eot"] = EOTModel(model, eot_samples)
        jobs.append(pgd("ce", "eot-pgd-ce", "eot"))
    if use_bpda:
        sources["bpda"] = EOTModel(BPDA(model), eot_samples) if randomized else BPDA(model)
        jobs += [pgd("ce", "bpda-pgd-ce", "bpda", "bpda"), pgd("margin", "bpda-pgd-margin", "bpda", "bpda")]
    if transfer and base_model is not None:
        sources["base"] = base_model
        jobs += [pgd("ce", "transfer-pgd-ce", "base", "transfer"),
                 pgd("margin", "transfer-pgd-margin", "base", "transfer")]
    skipped: dict[str, str] = {}
    if blackbox:
        if x.dim() == 4 and tm.name in ("Linf", "L2"):
            jobs.append(Job("square", tm.name, float(tm.eps), kwargs={"n_queries": square_queries, "seed": seed},
                            survivors_only=True, role="blackbox"))
        else:
            skipped["square"] = "needs (N, C, H, W) inputs and an Linf or L2 threat"
        jobs.append(Job("spsa", tm.name, float(tm.eps), kwargs={"steps": spsa_steps, "n_samples": spsa_samples,
                                                                "seed": seed}, survivors_only=True, role="blackbox"))
    if not use_bpda:
        skipped["bpda"] = "no module declares a backward surrogate"
    if not randomized:
        skipped["eot"] = "the model's outputs are deterministic"
    if base_model is None:
        skipped["transfer"] = "no base_model given"

    plan = run_plan(model, x, y, jobs, sources=sources, batch_size=batch_size, seed=seed, state=state_path,
                    progress=progress, shard=False)
    clean = plan.clean
    roles = {j.label: j.role for j in jobs}
    # white-box survivors-only jobs (APGD-T) report cumulatively, as the reference does; black-box ones are True on
    # the points they did not need to attack; every column is True on clean errors (``worst`` ANDs ``clean``)
    correct = {j.label: ((plan.cumulative(j.key) if j.survivors_only and j.role == "whitebox"
                          else plan.correct[j.key]) | ~clean) for j in jobs}
    seconds = {j.label: plan.seconds[j.key] for j in jobs}
    res = AdaptiveResult(threat=tm.name, eps=float(tm.eps), clean=clean, correct=correct, roles=roles,
                         seconds=seconds, skipped=skipped, config=config)
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

    from ..forging.calibration import is_forged
    from ..forging.surgery import unforge
    from ..nn import NRPMConv2d, NRPMLinear
    from ..reprogramming import unreprogram

    has_nrpm = any(isinstance(m, (NRPMLinear, NRPMConv2d)) for m in model.modules())
    if not has_nrpm and not is_forged(model):
        return None
    base = copy.deepcopy(model)
    if is_forged(base):
        base = unforge(base, inplace=True)
    if has_nrpm:
        base = unreprogram(base)
    return base.eval()
