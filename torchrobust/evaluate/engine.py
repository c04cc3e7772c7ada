r"""One evaluation engine: every evaluation is a **plan of jobs** run by **one runner**.

A :class:`Job` is one attack at one threat model and one ε (``model × threat × ε × attack``), optionally run only on
the points that survived the plan's earlier jobs at the same threat and ε (``survivors_only``: AutoAttack's own
protocol, which makes expensive attacks cheap), and optionally crafted on another model than the one evaluated
(``source``: a transfer source, a BPDA or EOT wrapper). :func:`run_plan` runs a list of jobs and owns, once, what
every evaluation must get right:

* **input validation** (``x`` finite in [0, 1], labels in range) and the clean predictions, computed once;
* **eval mode** for every submodule of every model involved while it runs, each submodule's ``training`` flag
  restored afterwards (the attacks do the same per call; this also covers the clean and scoring passes);
* **device placement**: batches go to the model's device, per-example results come back to the CPU;
* **per-example booleans**: ``correct[job][i]`` is True when example ``i`` is still classified correctly after the
  job's attack (and was correct clean). Points a job does not attack (clean errors; points an earlier job already
  broke, for ``survivors_only``) hold the value that keeps the per-example worst case right: False for clean
  errors, True for points broken earlier (the earlier job's column holds their False). The reported robust
  accuracy at ``(threat, ε)`` is the mean of the AND over clean and every job there — the per-example worst case
  (Carlini et al. 2019, Sec. 5.1; AutoAttack);
* **cost**: per-job wall seconds, forward passes and gradient passes (forwards with autograd on an input that
  requires a gradient — each is followed by one backward in our attacks), counted in examples;
* **progress**: one tqdm bar over all batches (``progress=True``);
* **resumable state without pickle**: with ``state=STEM`` the runner rewrites ``STEM.json`` +
  ``STEM.safetensors`` atomically after every ``save_every`` batches and at the end of every job. The state carries a
  fingerprint of the model weights (and every ``source`` model's), the data (``x`` and ``y``) and the plan
  (every job's configuration, batch size, seed, shard). A rerun with the same arguments skips the batches already
  done; a state left by another model, data split or configuration is never reused (the runner recomputes and
  says so in one warning line). Batches are fixed slices of each job's (deterministic) list of points to attack and
  every attack is seeded per call, so a run killed at any moment (``kill -9``) and rerun gives results identical
  to an uninterrupted run;
* **adversarial points** (``keep_adv=True``): ``PlanResult.adv[key]`` holds the job's adversarial example of every
  point (the clean input where the job attacked nothing), saved in the resumable state beside the booleans — for
  measurements that need the points themselves (the network-level Lipschitz ratios of
  :func:`torchrobust.evaluate.lipschitz.lipschitz_report`, PSAT's gate routing). ``all_points=True`` attacks every
  example, clean errors included (a measurement, not a robust-accuracy evaluation);
* **torchrun**: each process attacks its contiguous shard of the examples and the per-example results are
  all-gathered, so every rank ends with what one process would compute.

Example::

    >>> from torchrobust.evaluate.engine import Job, run_plan
    >>> jobs = [Job("fgsm", "Linf", 0.1), Job("apgd-ce", "Linf", 0.1), Job("apgd-t", "Linf", 0.1,
    ...         survivors_only=True)]
    >>> res = run_plan(model, x, y, jobs, state="results/state", progress=True)
    >>> res.robust_accuracy("Linf", 0.1), res.seconds, res.counts
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as D
from ..attacks.threat import ThreatModel, get_threat
from ..errors import TorchRobustError
from ..validation import check_eps, check_images, check_labels, eval_mode, model_device, probe_logits

__all__ = ["Job", "PlanResult", "run_plan", "job_for_attack", "attack_strength", "result_strength", "ROLES"]

log = logging.getLogger(__name__)

#: what a job's attack is, for the gradient-masking checks (:mod:`torchrobust.evaluate.checks`)
ROLES = ("whitebox", "blackbox", "transfer", "bpda")

AttackLike = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Job:
    """One attack at one threat model and budget.

    Args:
        attack: a registered attack name (built with :func:`torchrobust.attacks.create` and ``kwargs``) or an attack
            object ``attack(model, x, y) -> x_adv`` (its ``repr`` enters the state fingerprint).
        threat: ``"Linf"``, ``"L2"``, ``"L1"``, or a threat-model object (the ℓ0 attack takes
            ``torchrobust.attacks.l0.L0(k)``: ℓ0 has no name in :func:`~torchrobust.attacks.threat.get_threat`).
        eps: the budget (ε = 0 is not attacked: its result is the clean one).
        kwargs: keyword arguments of the attack (for a named attack).
        name: the column label (default: the attack name).
        survivors_only: attack only the points still robust after the plan's earlier jobs at this threat and ε.
        role: ``"whitebox"``, ``"blackbox"``, ``"transfer"`` or ``"bpda"`` (a surrogate-gradient attack).
        source: key into ``run_plan(sources=...)`` of the model the attack is crafted on (None: the evaluated model).
        keep_adv: keep every adversarial example (``PlanResult.adv[key]``; saved in the resumable state).
        all_points: attack every example, clean errors included (not only the clean-correct ones); not with
            ``survivors_only``.
    """

    attack: str | AttackLike
    threat: str | ThreatModel
    eps: float
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    survivors_only: bool = False
    role: str = "whitebox"
    source: str | None = None
    keep_adv: bool = False
    all_points: bool = False

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        return self.attack if isinstance(self.attack, str) else type(self.attack).__name__.lower()

    @property
    def key(self) -> str:
        """Unique key of the job in a plan: ``label@threat:eps``."""
        return f"{self.label}@{self.threat}:{float(self.eps)!r}"

    def config(self) -> dict[str, Any]:
        """JSON description of the job (part of the state fingerprint)."""
        attack = self.attack if isinstance(self.attack, str) else repr(self.attack)
        threat = self.threat if isinstance(self.threat, str) else repr(self.threat)  # e.g. L0(eps=1)
        out = {"attack": attack, "threat": threat, "eps": float(self.eps),
               "kwargs": {k: _jsonable(v) for k, v in sorted(self.kwargs.items())}, "name": self.label,
               "survivors_only": self.survivors_only, "role": self.role, "source": self.source}
        for k in ("keep_adv", "all_points"):  # only when set: states written before these options stay valid
            if getattr(self, k):
                out[k] = True
        return out


def job_for_attack(attack: AttackLike, **kwargs: Any) -> Job:
    """A :class:`Job` of an attack object whose budget the attack itself declares: a torchrobust
    :class:`~torchrobust.attacks.Attack` runs at (and is budget-checked against) its own threat model and ε; a plain
    callable declares no budget, so only the [0, 1] box is checked (ℓ∞ radius 1). ``kwargs`` go to :class:`Job`."""
    from ..attacks.base import Attack

    if isinstance(attack, Attack):
        return Job(attack, attack.threat.name, float(attack.threat.eps), **kwargs)
    return Job(attack, "Linf", 1.0, **kwargs)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(u) for k, u in v.items()}
    return repr(v)


# ------------------------------------------------------------------------------------------------------ strength
#: attacks that are weak on their own: a result computed only from these is labelled ``"weak"``
_WEAK_ALWAYS = frozenset({"fgsm", "deepfool"})


def attack_strength(attack: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """``"weak"`` or ``"strong"``: FGSM and DeepFool are weak; PGD and APGD are weak with one restart and fewer than
    50 steps (PGD-20 overstates robustness against APGD-100 by up to 14 points on NRPM models); AutoAttack, C&W,
    Square, SPSA, APGD (100 steps by default) and PGD with ≥ 50 steps or restarts are strong."""
    kwargs = kwargs or {}
    name = attack.lower()
    if name in _WEAK_ALWAYS:
        return "weak"
    if name == "pgd" or name.startswith("apgd"):  # iterative: PGD-40 / APGD-100 by default
        steps = int(kwargs.get("steps", 40 if name == "pgd" else 100))
        restarts = int(kwargs.get("restarts", 1))
        return "strong" if steps >= 50 or restarts > 1 else "weak"
    return "strong"


def result_strength(jobs: Sequence[Job]) -> str:
    """``"strong"`` if any job's attack is strong (the worst case is at least as strong as its strongest attack),
    else ``"weak"``. An attack object counts by its class: APGD, AutoAttack, Square and C&W are strong, PGD by
    :func:`attack_strength`'s rule, anything else (an unknown callable) weak."""
    from ..attacks import CW, PGD, AutoAttack, Square
    from ..attacks.apgd import APGD

    for j in jobs:
        a = j.attack
        if isinstance(a, str):
            strong = attack_strength(a, j.kwargs) == "strong"
        elif isinstance(a, (PGD, APGD)):
            strong = attack_strength("pgd", {"steps": a.steps, "restarts": a.restarts}) == "strong"
        else:
            strong = isinstance(a, (AutoAttack, Square, CW))
        if strong:
            return "strong"
    return "weak"


# ------------------------------------------------------------------------------------------------------ result
@dataclass
class PlanResult:
    """What :func:`run_plan` returns: per-example booleans per job, and what each job cost."""

    jobs: list[Job]
    clean: Tensor
    correct: dict[str, Tensor]
    seconds: dict[str, float]
    counts: dict[str, dict[str, int]]
    resumed: dict[str, int] = field(default_factory=dict)
    #: per job, the evaluated model's cross-entropy at each attacked point's result (NaN where not attacked)
    loss: dict[str, Tensor] = field(default_factory=dict)
    #: per ``keep_adv`` job, the adversarial example of every point (the clean input where it attacked nothing)
    adv: dict[str, Tensor] = field(default_factory=dict)

    def job(self, key: str) -> Job:
        return next(j for j in self.jobs if j.key == key)

    def _and(self, threat: str, eps: float, jobs: Sequence[Job]) -> Tensor:
        """Clean AND the results of those of ``jobs`` at ``(threat, eps)``."""
        out = self.clean.clone()
        for j in jobs:
            if j.threat == threat and float(j.eps) == float(eps):
                out &= self.correct[j.key]
        return out

    def worst(self, threat: str, eps: float) -> Tensor:
        """Per-example worst case at ``(threat, eps)``: clean AND every job there."""
        return self._and(threat, eps, self.jobs)

    def robust_accuracy(self, threat: str, eps: float) -> float:
        return float(self.worst(threat, eps).float().mean())

    def cumulative(self, key: str) -> Tensor:
        """Per-example: correct clean, under this job and under every earlier job at its threat and ε."""
        j = self.job(key)
        return self._and(j.threat, j.eps, self.jobs[:self.jobs.index(j) + 1])

    def column(self, key: str) -> Tensor:
        """Per-example result reported for one job: correct clean and under it alone; for a ``survivors_only``
        job, under it and the earlier jobs at its ε (it attacked nothing else), as AutoAttack reports."""
        return self.cumulative(key) if self.job(key).survivors_only else self.clean & self.correct[key]

    def accuracy(self, key: str) -> float:
        """Mean of :meth:`column`."""
        return float(self.column(key).float().mean())


# ------------------------------------------------------------------------------------------------------ helpers
def _device(model: nn.Module, x: Tensor) -> torch.device:
    return model_device(model, x.device)


class _Counter:
    """Counts the examples of forward passes, and of those with autograd on an input that requires a gradient."""

    def __init__(self) -> None:
        self.forward = 0
        self.gradient = 0

    def hook(self, module: nn.Module, inputs: tuple) -> None:
        t = next((a for a in inputs if isinstance(a, Tensor)), None)
        n = int(t.shape[0]) if t is not None and t.dim() > 0 else 1
        self.forward += n
        if torch.is_grad_enabled() and t is not None and t.requires_grad:
            self.gradient += n


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _score(model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(correct, cross-entropy)`` of ``model`` at ``x_adv``, on the CPU."""
    with torch.no_grad():
        logits = model(x_adv)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
    return (logits.argmax(1) == y).cpu(), loss.cpu()


def _build_attack(job: Job, seed: int) -> AttackLike:
    if not isinstance(job.attack, str):
        return job.attack
    from .. import attacks as A

    atk = A.create(job.attack, threat=job.threat, eps=float(job.eps), **dict(job.kwargs))
    if getattr(atk, "seed", 0) is None:  # a randomised attack without its own seed gets the plan's
        atk.seed = seed
    return atk


def validate_jobs(jobs: Sequence[Job], sources: Mapping[str, nn.Module]) -> None:
    """One-line errors for a plan that cannot run: unknown attack names, bad ε, duplicate keys, missing sources."""
    from .. import attacks as A

    if not jobs:
        raise TorchRobustError("the evaluation plan has no jobs; pass at least one attack and one eps")
    valid = set(A.list_attacks())
    seen: set[str] = set()
    for j in jobs:
        if isinstance(j.attack, str) and j.attack.lower() not in valid:
            from ..errors import unknown_name

            raise unknown_name("attack", j.attack, valid)
        check_eps(j.eps)
        if j.role not in ROLES:
            raise TorchRobustError(f"unknown job role {j.role!r}; valid: {', '.join(ROLES)}")
        if j.source is not None and j.source not in sources:
            raise TorchRobustError(f"job {j.key} is crafted on source {j.source!r} but no such model was passed; "
                                   f"pass sources={{{j.source!r}: model}}")
        if j.all_points and j.survivors_only:
            raise TorchRobustError(f"job {j.key} has both all_points and survivors_only; choose one")
        if j.key in seen:
            raise TorchRobustError(f"the plan has job {j.key} twice; give one of them another name=")
        seen.add(j.key)


def _check_budget(job: Job, threat: Any, x_adv: Tensor, x: Tensor, tol: float) -> None:
    """Every result must lie in its ε-ball ∩ [0, 1] (attack objects of ours check themselves; callables may not)."""
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        raise TorchRobustError(f"{job.threat} attack {job.label!r} returned "
                               f"{tuple(getattr(x_adv, 'shape', ())) or type(x_adv).__name__}, expected the shape "
                               f"{tuple(x.shape)} of its input; fix the attack")
    inside = threat.contains(x_adv.detach(), x, tol=tol)
    if not bool(inside.all()):
        raise TorchRobustError(f"{job.threat} attack {job.label!r} returned {int((~inside).sum())} example(s) "
                               f"outside the eps={float(job.eps):g} ball or [0, 1]; fix the attack")


# ------------------------------------------------------------------------------------------------------ state
class _Store:
    """The runner's per-example state, in memory and (with a path stem) on disk as JSON + safetensors."""

    def __init__(self, stem: Path | None, fingerprint: dict[str, str], keys: list[str], n: int,
                 adv_keys: Sequence[str] = (), adv_shape: tuple[int, ...] = ()) -> None:
        self.stem, self.fingerprint, self.keys, self.n = stem, fingerprint, keys, n
        self.adv_keys, self.adv_shape = set(adv_keys), adv_shape
        self.adv: dict[str, Tensor] = {}
        self.clean: Tensor | None = None
        self.correct: dict[str, Tensor] = {}
        self.done: dict[str, Tensor] = {}
        self.loss: dict[str, Tensor] = {}
        self.finished: dict[str, bool] = {}
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.resumed: dict[str, int] = {}  # key -> examples already done when the run started
        self._base_seconds: dict[str, float] = {}
        self._base_counts: dict[str, tuple[int, int]] = {}
        if stem is not None:
            self._load()

    def _load(self) -> None:
        from .. import resume

        assert self.stem is not None
        loaded = resume.load_state(self.stem, self.fingerprint)
        if loaded is None:
            return
        tensors, meta = loaded
        try:
            clean = tensors["clean"].to(torch.bool)
            if clean.shape != (self.n,):
                raise KeyError("clean")
            correct = {k: tensors[f"correct/{i}"].to(torch.bool) for i, k in enumerate(self.keys)
                       if f"correct/{i}" in tensors}
            done = {k: tensors[f"done/{i}"].to(torch.bool) for i, k in enumerate(self.keys) if f"done/{i}" in tensors}
            loss = {k: tensors[f"loss/{i}"].float() for i, k in enumerate(self.keys) if f"loss/{i}" in tensors}
            adv = {k: tensors[f"adv/{i}"] for i, k in enumerate(self.keys) if f"adv/{i}" in tensors}
            if set(correct) != set(done) or set(correct) != set(loss):
                raise KeyError("correct/done/loss")
            if set(adv) != set(correct) & self.adv_keys:
                raise KeyError("adv")
            if any(t.shape != (self.n,) for d in (correct, done, loss) for t in d.values()):
                raise KeyError("correct/done/loss shape")
            if any(t.shape != (self.n, *self.adv_shape) or not t.is_floating_point() for t in adv.values()):
                raise KeyError("adv shape")
            jobs = meta["jobs"]
        except (KeyError, TypeError, RuntimeError) as exc:  # never overwrite a state that claims to be this run's
            raise resume.state_error(self.stem.with_name(self.stem.name + ".safetensors"),
                                     f"its tensors do not match its jobs: {exc}") from exc
        self.clean, self.correct, self.done, self.loss, self.adv = clean, correct, done, loss, adv
        for k in self.keys:
            info = jobs.get(k, {}) if isinstance(jobs, dict) else {}
            self.finished[k] = bool(info.get("finished", False)) and k in correct
            self.seconds[k] = float(info.get("seconds", 0.0))
            self.counts[k] = {"forward": int(info.get("forward", 0)), "gradient": int(info.get("gradient", 0))}
            if k in done:
                self.resumed[k] = int(done[k].sum())
        n_done = sum(1 for k in self.keys if self.finished[k])
        log.info("resuming evaluation from %s: %d of %d jobs finished", self.stem, n_done, len(self.keys))

    def update(self, key: str, correct: Tensor, done: Tensor, loss: Tensor, adv: Tensor | None, seconds: float,
               counter: _Counter, finished: bool = False) -> None:
        self.correct[key], self.done[key], self.loss[key] = correct, done, loss
        if adv is not None:
            self.adv[key] = adv
        self.seconds[key] = self._base_seconds.get(key, 0.0) + seconds
        f0, g0 = self._base_counts.get(key, (0, 0))
        self.counts[key] = {"forward": f0 + counter.forward, "gradient": g0 + counter.gradient}
        self.finished[key] = finished

    def begin(self, key: str) -> None:
        """Remember what a resumed job had already cost (added to this run's costs)."""
        self._base_seconds[key] = self.seconds.get(key, 0.0)
        c = self.counts.get(key, {})
        self._base_counts[key] = (int(c.get("forward", 0)), int(c.get("gradient", 0)))

    def save(self) -> None:
        if self.stem is None:
            return
        from .. import resume

        tensors = {"clean": self.clean}
        for i, k in enumerate(self.keys):
            if k in self.correct:
                tensors[f"correct/{i}"] = self.correct[k]
                tensors[f"done/{i}"] = self.done[k]
                tensors[f"loss/{i}"] = self.loss[k]
                if k in self.adv:
                    tensors[f"adv/{i}"] = self.adv[k]
        meta = {"jobs": {k: {"finished": self.finished.get(k, False), "seconds": self.seconds.get(k, 0.0),
                             **self.counts.get(k, {})} for k in self.keys if k in self.correct}}
        resume.save_state(self.stem, tensors, meta, self.fingerprint)


# ------------------------------------------------------------------------------------------------------ the runner
def run_plan(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    jobs: Sequence[Job],
    *,
    sources: Mapping[str, nn.Module] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    state: str | Path | None = None,
    save_every: int = 1,
    progress: bool = False,
    shard: bool = True,
    tol: float = 1e-6,
) -> PlanResult:
    """Run ``jobs`` against ``model`` on ``(x, y)``; see the module docstring.

    Args:
        model: the evaluated model (logits on [0, 1] inputs).
        x, y: inputs ``(N, ...)`` in [0, 1] and int64 labels ``(N,)``.
        jobs: the plan, run in order (``survivors_only`` jobs see the results of the earlier ones).
        sources: models that jobs are crafted on (``Job.source`` keys): transfer sources, BPDA/EOT wrappers.
        batch_size: examples per attack call (part of the fingerprint: batches are the unit of resumption).
        seed: the seed of attacks built by name that have no seed of their own.
        state: path stem of the resumable state (``STEM.json`` + ``STEM.safetensors``); None: no state.
        save_every: write the state after every this many batches (and after every job).
        progress: a tqdm bar over all batches.
        shard: under torchrun, split the examples over the processes (False: every process runs everything).
        tol: relative tolerance of the budget check of every result (the reference AutoAttack's float32
            projections need 1e-5).
    """
    from .. import resume

    sources = dict(sources or {})
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TorchRobustError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise TorchRobustError(f"save_every must be an integer >= 1, got {save_every!r}")
    jobs = list(jobs)
    validate_jobs(jobs, sources)
    check_images(x)
    n_total = len(x)
    dev = _device(model, x)
    with eval_mode(model):
        num_classes = probe_logits(model, x[:1].to(dev))
    check_labels(y, n_total, num_classes)
    x, y = x.detach(), y.detach().long()
    a_, b_ = D.shard_bounds(n_total) if shard else (0, n_total)
    xs, ys = x[a_:b_], y[a_:b_]
    n = len(xs)

    stem = None
    fp: dict[str, str] = {}
    if state is not None:
        stem = resume.check_state_path(state)
        if shard and D.world_size() > 1:
            stem = stem.with_name(f"{stem.name}.rank{D.rank()}")
        config = {"jobs": [j.config() for j in jobs], "batch_size": batch_size, "seed": seed,
                  "shard": [a_, b_, n_total]}
        fp = resume.make_fingerprint(model, (xs, ys), config,
                                     **{f"source:{k}": resume.fingerprint_model(m) for k, m in sources.items()})
    store = _Store(stem, fp, [j.key for j in jobs], n, [j.key for j in jobs if j.keep_adv], tuple(xs.shape[1:]))

    with ExitStack() as stack:
        for m in (model, *sources.values()):  # every submodule's flag restored on exit
            stack.enter_context(eval_mode(m))
        if store.clean is None:
            store.clean = (torch.cat([_predict(model, xs[i:i + batch_size].to(dev)).cpu() == ys[i:i + batch_size]
                                      .cpu() for i in range(0, n, batch_size)]) if n
                           else torch.zeros(0, dtype=torch.bool))
        clean = store.clean
        bar = None
        if progress and D.is_main():
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=len(jobs), desc="evaluate", unit="job", leave=False))
        for pos, j in enumerate(jobs):
            key = j.key
            if store.finished.get(key):
                if bar is not None:
                    bar.update(1)
                continue
            src = model if j.source is None else sources[j.source]
            correct, done, loss = store.correct.get(key), store.done.get(key), store.loss.get(key)
            adv = store.adv.get(key)
            if correct is None or done is None or loss is None:
                correct, done = clean.clone(), torch.zeros(n, dtype=torch.bool)
                loss = torch.full((n,), float("nan"))
                adv = None
            if j.keep_adv and adv is None:
                adv = xs.detach().cpu().clone()
            threat = get_threat(j.threat, float(j.eps)) if float(j.eps) > 0 else None
            todo = torch.ones(n, dtype=torch.bool) if j.all_points else clean.clone()
            if j.survivors_only:
                for prev in jobs[:pos]:
                    if prev.threat == j.threat and float(prev.eps) == float(j.eps):
                        todo &= store.correct[prev.key]
            idx = todo.nonzero().squeeze(1) if float(j.eps) > 0 else torch.zeros(0, dtype=torch.long)
            batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
            if bar is not None:
                bar.set_postfix_str(key)
            attack = _build_attack(j, seed) if batches else None
            counter = _Counter()
            store.begin(key)
            handle = src.register_forward_pre_hook(counter.hook)
            t0 = time.perf_counter()
            try:
                for b, sel in enumerate(batches):
                    if bool(done[sel].all()):
                        continue
                    xb, yb = xs[sel].to(dev), ys[sel].to(dev)
                    x_adv = attack(src, xb, yb)
                    _check_budget(j, threat, x_adv, xb, tol)
                    correct[sel], loss[sel] = _score(model, x_adv, yb)
                    if adv is not None:
                        adv[sel] = x_adv.detach().to(device="cpu", dtype=adv.dtype)
                    done[sel] = True
                    store.update(key, correct, done, loss, adv, time.perf_counter() - t0, counter)
                    if (b + 1) % save_every == 0 and b + 1 < len(batches):
                        store.save()
            finally:
                handle.remove()
            store.update(key, correct, done, loss, adv, time.perf_counter() - t0, counter, finished=True)
            store.save()
            if bar is not None:
                bar.update(1)
            acc = float(((todo if j.survivors_only or j.all_points else clean) & correct).float().mean()) if n \
                else float("nan")
            log.info("%s: accuracy %.2f%% (%d points attacked, %.1f s)", key, 100 * acc, len(idx),
                     store.seconds[key])

    gather = (lambda t: D.gather_rows(t, n_total)) if shard else (lambda t: t)
    return PlanResult(jobs=jobs, clean=gather(clean), correct={j.key: gather(store.correct[j.key]) for j in jobs},
                      seconds={j.key: store.seconds.get(j.key, 0.0) for j in jobs},
                      counts={j.key: dict(store.counts.get(j.key, {})) for j in jobs}, resumed=dict(store.resumed),
                      loss={j.key: gather(store.loss[j.key]) for j in jobs},
                      adv={j.key: gather(store.adv[j.key]) for j in jobs if j.keep_adv})
