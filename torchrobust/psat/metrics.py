"""Multi-perturbation metrics and PSAT Table 1-style tables (Markdown / CSV / LaTeX).

Columns (docs/paper-code-facts.md#psat-metrics, verified arithmetic on PSAT Table 1):

* ``clean`` — clean accuracy.
* ``Linf``, ``L2``, ``L1`` — accuracy under each attack.
* ``max`` — the paper's ``Acc^max``: per example the adversarial example **with the highest loss** among the
  three attacks (robust_union ``pgd_worst_dir``), then its accuracy. This can exceed ``min(Linf, L2, L1)``
  (the paper's PSAT row: 40.78 > 40.33), because the highest-loss example can still be classified correctly.
* ``union`` — strict union (MSD's "all attacks"; Carlini et al.'s per-example min over attacks): correct only
  if clean and every attack fail to fool the model. Always ≤ every per-norm column. Not in the paper.
* ``avg`` — ``mean(Linf, L2, L1)`` (``Acc^avg``).
* ``trade_off`` — mean of the six paper columns ``(clean, Linf, L2, L1, max, avg)``; reproduces all 27 rows of
  PSAT Table 1 to 0.01. It uses the paper's ``max``, not ``union``.
* ``params``, ``saving`` — parameter count and ``1 - params / plain`` (negative = more parameters).

Every row is a plan of the evaluation engine (:func:`torchrobust.evaluate.engine.run_plan`: one job per norm and
attack; ``cascade`` makes the later attacks survivors-only). Every adversarial example is checked to lie in its
ε-ball ∩ [0, 1] (hard error otherwise). For a
:class:`~torchrobust.psat.aggregate.PSATEnsemble` the attack is adaptive by default
(:func:`~torchrobust.psat.aggregate.adaptive_attack`: end to end plus each member alone, per-example worst).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from torchrobust.attacks.threat import THREAT_NAMES
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.engine import Job, PlanResult, run_plan
from torchrobust.psat.aggregate import PSATEnsemble, adaptive_attack
from torchrobust.tables import Column, ColumnKind, Table

__all__ = ["MultiNormRow", "evaluate_multi_norm", "format_attack_breakdown", "format_table", "table", "trade_off",
           "NORMS"]

NORMS = THREAT_NAMES
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
_LABELS = {"Linf": "ℓ∞", "L2": "ℓ2", "L1": "ℓ1"}
_TEX = {"Linf": r"$\ell_\infty$", "L2": r"$\ell_2$", "L1": r"$\ell_1$"}


def trade_off(clean: float, linf: float, l2: float, l1: float, acc_max: float, acc_avg: float) -> float:
    """PSAT's ``Acc_trade-off``: the mean of the six Table 1 columns."""
    return (clean + linf + l2 + l1 + acc_max + acc_avg) / 6.0


@dataclass
class MultiNormRow:
    """One table row; accuracies are fractions in [0, 1]."""

    name: str
    clean: float
    per_norm: dict[str, float]
    max_loss: float
    union: float
    n: int
    params: int | None = None
    saving: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def avg(self) -> float:
        return sum(self.per_norm[k] for k in NORMS) / len(NORMS)

    @property
    def trade_off(self) -> float:
        p = self.per_norm
        return trade_off(self.clean, p["Linf"], p["L2"], p["L1"], self.max_loss, self.avg)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.update(avg=self.avg, trade_off=self.trade_off)
        return d


def evaluate_multi_norm(name: str, model: nn.Module, x: Tensor, y: Tensor,
                        attacks: Mapping[str, AttackFn | Mapping[str, AttackFn]],
                        eps: Mapping[str, float], batch_size: int = 250, adaptive: bool | Collection[str] = True,
                        params: int | None = None, saving: float | None = None, tol: float = 1e-6,
                        cascade: bool = False) -> MultiNormRow:
    """Clean, per-norm, loss-selected max, union accuracies of ``model`` on ``(x, y)``.

    ``attacks`` maps each of ``Linf``/``L2``/``L1`` to ``attack(model, x, y) -> x_adv``, or to a mapping
    ``attack name -> attack`` (e.g. ``{"pgd": ..., "autoattack": ...}``): then every attack is run and, per example,
    the strongest result is kept (:func:`~torchrobust.psat.aggregate.strongest`: the first that fools the model,
    else the highest loss), so a norm's accuracy is that of the worst case over its attacks. Each attack's own
    accuracy is recorded in ``row.extra["<norm>/<attack>"]``.

    ``cascade``: run each later attack only on the examples the earlier ones did not fool — AutoAttack's own
    protocol, the same worst case at a fraction of the cost. ``row.extra["<norm>/<attack>"]`` is then the
    *cumulative* accuracy after that attack (like ``AutoAttackResult.robust_after``).

    ``eps`` gives the budgets of the membership check (every result must lie in its ε-ball ∩ [0, 1], up to ``tol``
    relative, else :class:`TorchRobustError`; the reference AutoAttack's float32 projections need ``tol=1e-5``).

    ``adaptive``: for a :class:`PSATEnsemble`, run attacks through :func:`adaptive_attack` (end to end plus each
    member alone) — ``True`` for all attacks, ``False`` for none (end to end only), or the names of the attacks to
    run adaptively (a single attack is named ``"attack"``).
    """
    missing = [k for k in NORMS if k not in attacks or k not in eps]
    if missing:
        raise TorchRobustError(f"evaluate_multi_norm needs an attack and an eps for {missing}; "
                               "pass attacks/eps for Linf, L2 and L1")
    named = {k: (dict(attacks[k]) if isinstance(attacks[k], Mapping) else {"attack": attacks[k]}) for k in NORMS}
    for k, atks in named.items():
        if not atks:
            raise TorchRobustError(f"no attack given for {k}; pass at least one attack per norm")
    jobs: list[Job] = []
    for k in NORMS:
        for pos, (a, attack) in enumerate(named[k].items()):
            use_adaptive = adaptive if isinstance(adaptive, bool) else a in adaptive
            fn = _AdaptiveAttack(attack) if use_adaptive and isinstance(model, PSATEnsemble) else attack
            jobs.append(Job(fn, k, float(eps[k]), name=a, survivors_only=cascade and pos > 0))
    res = run_plan(model, x, y, jobs, batch_size=batch_size, tol=tol)
    c = res.clean
    ok = torch.stack([res.worst(k, float(eps[k])) for k in NORMS])
    loss = torch.stack([_norm_loss(res, [j for j in jobs if j.threat == k]) for k in NORMS])
    pick = torch.nan_to_num(loss, nan=-math.inf).argmax(0)
    max_ok = ok.gather(0, pick.view(1, -1)).squeeze(0)
    union = c & ok.all(0)
    n = len(c)
    extra = {f"{j.threat}/{j.label}": res.accuracy(j.key) for j in jobs if len(named[j.threat]) > 1}
    return MultiNormRow(name, c.float().mean().item(), {k: ok[i].float().mean().item() for i, k in enumerate(NORMS)},
                        max_ok.float().mean().item(), union.float().mean().item(), n, params, saving, extra)


class _AdaptiveAttack:
    """``attack`` run through :func:`adaptive_attack` on a :class:`PSATEnsemble` (end to end plus each member)."""

    def __init__(self, attack: AttackFn) -> None:
        self.attack = attack

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return adaptive_attack(model, self.attack, x, y)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"adaptive({self.attack!r})"


def _norm_loss(res: PlanResult, jobs: Sequence[Job]) -> Tensor:
    """Per example, the loss of the strongest of one norm's results (:func:`strongest`'s rule): the first attack
    (in order) whose result fools the model, else the highest loss. NaN where nothing was attacked."""
    out = torch.full_like(res.clean, float("nan"), dtype=torch.float32)
    fooled = torch.zeros_like(res.clean)
    for j in jobs:
        lo, attacked = res.loss[j.key], ~torch.isnan(res.loss[j.key])
        hit = attacked & ~res.correct[j.key] & ~fooled
        out = torch.where(hit, lo, out)
        fooled |= hit
        higher = attacked & ~fooled & ~(lo <= out)  # (NaN-safe: a first value replaces NaN)
        out = torch.where(higher, lo, out)
    return out


def _fmt_params(p: int) -> str:
    return f"{p / 1e6:.3f}M"


def _fmt_saving(s: float) -> str:
    if s == 0:
        return "0.00%"
    return f"↓{s * 100:.2f}%" if s >= 0 else f"↑{-s * 100:.2f}%"


def table(rows: Sequence[MultiNormRow], digits: int = 2) -> Table:
    """PSAT Table 1 as a :class:`torchrobust.tables.Table`: ``method``, the accuracies (``PERCENT``, ``digits``
    decimals), ``params``, ``saving`` (``PERCENT``, shown as ``↓79.30%``/``↑10.00%``) and ``n``."""

    def pct(name: str, label: str, tex: str) -> Column:
        return Column(name, ColumnKind.PERCENT, digits=digits, label=label, latex=tex, missing="–")

    cols = [Column("method", ColumnKind.TEXT, label="Method"), pct("clean", "Clean", r"Acc$_{clean}$"),
            *(pct(k, _LABELS[k], f"Acc {_TEX[k]}") for k in NORMS), pct("max", "Max (loss)", r"Acc$^{max}$"),
            pct("union", "Union", r"Acc$^{union}$"), pct("avg", "Avg", r"Acc$^{avg}$"),
            pct("trade_off", "Trade-off", r"Acc$_{trade\text{-}off}$"),
            Column("params", ColumnKind.INT, label="# Params", latex=r"\# Params", missing="–", formatter=_fmt_params),
            Column("saving", ColumnKind.PERCENT, digits=2, label="Saving", missing="–", formatter=_fmt_saving),
            Column("n", ColumnKind.INT)]
    data = [{"method": r.name, "clean": r.clean, **r.per_norm, "max": r.max_loss, "union": r.union, "avg": r.avg,
             "trade_off": r.trade_off, "params": r.params, "saving": r.saving, "n": r.n} for r in rows]
    return Table(cols, data)


def format_table(rows: Sequence[MultiNormRow], fmt: str = "markdown", digits: int = 2) -> str:
    """PSAT Table 1-style table in ``"markdown"``, ``"csv"`` or ``"latex"`` (accuracies in %), rendered from
    :func:`table` (the CSV holds every column, accuracies × 100; Markdown and LaTeX leave out ``n``)."""
    if fmt not in ("markdown", "csv", "latex"):
        raise TorchRobustError(f"unknown table format {fmt!r}; valid: csv, latex, markdown")
    t = table(rows, digits)
    if fmt == "csv":
        return t.to_csv(formatted=True)
    shown = t.select(n for n in t.names if n != "n")
    return shown.markdown_grid() if fmt == "markdown" else shown.to_latex(float_env=False, percent_sign=True)


def format_attack_breakdown(rows: Sequence[MultiNormRow], digits: int = 2) -> str:
    """Markdown table of each attack's own accuracy per norm (``row.extra["<norm>/<attack>"]``) beside the
    per-example worst case over the attacks (the value in :func:`format_table`). Rows without a breakdown
    (one attack per norm) are left out; an empty string if there are none."""
    keyed = [r for r in rows if r.extra]
    if not keyed:
        return ""
    attacks: list[str] = []
    for r in keyed:
        for key in r.extra:
            a = key.split("/", 1)[1]
            if a not in attacks:
                attacks.append(a)
    cols = [Column("method", ColumnKind.TEXT, label="Method")]
    for k in NORMS:
        cols += [Column(f"{k}/{a}", ColumnKind.PERCENT, digits=digits, label=f"{_LABELS[k]} {a}", missing="–")
                 for a in attacks]
        cols.append(Column(f"{k} worst", ColumnKind.PERCENT, digits=digits, label=f"{_LABELS[k]} worst"))
    data = [{"method": r.name, **r.extra, **{f"{k} worst": r.per_norm[k] for k in NORMS}} for r in keyed]
    return Table(cols, data).markdown_grid()
