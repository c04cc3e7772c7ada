"""Robust accuracy over an ε sweep for a list of attacks, with the per-example worst case across attacks.

>>> res = sweep(model, x, y, eps=[0, 0.1, 0.2, 0.3], threat="Linf")   # FGSM, APGD-CE, APGD-T on the survivors
>>> res.write("results/")   # results.json, results.csv, results.md, accuracy_vs_eps.png
>>> sweep(model, x, y, attacks=["pgd"], eps=[0.1], attack_kwargs={"pgd": {"steps": 20}}).strength
'weak'

Every sweep is a plan of jobs run by the one evaluation engine (:mod:`torchrobust.evaluate.engine`): eval mode,
batching, per-example booleans, per-job time and forward/gradient counts, and resumable state (``state=``).

Under ``torchrun`` each process attacks its contiguous shard of the examples and the per-example results are
all-gathered, so every rank ends with the same :class:`SweepResult` as a single process would compute.
"""

from __future__ import annotations

import io
import json
import logging
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as D
from ..errors import TorchRobustError
from ..io import atomic_write_bytes
from ..tables import Column, ColumnKind, Table
from ..validation import check_eps
from .engine import Job, PlanResult, result_strength, run_plan, validate_jobs

__all__ = ["SweepResult", "sweep", "plan_jobs", "DEFAULT_ATTACKS", "SURVIVORS_ONLY", "WEAK_NOTE", "write_table_files",
           "markdown_table", "accuracy_table", "ACCURACY_NOTE", "plot_accuracy_vs_eps", "upper_bound_note"]

log = logging.getLogger(__name__)


#: the line every table computed only from weak attacks carries
WEAK_NOTE = ("**Strength: weak** — computed only from weak attacks (FGSM, or PGD with one restart and < 50 steps); "
             "it overstates robustness. Use the default attacks (APGD-CE + APGD-T) for a trustworthy number.")
#: the line above every accuracy-vs-ε table
ACCURACY_NOTE = "Accuracy in % (per-example worst case over attacks in `worst_case`)."


def upper_bound_note(flags: Mapping[str, Iterable[str]],
                     adaptive_command: str = "torchrobust evaluate --suite adaptive", *, defence: str) -> str | None:
    """The note naming the labels whose robust numbers are upper bounds: every label with at least one flag code
    (``flags[label]``: the sweep's codes for it, e.g. ``BPDA_NOT_EVALUATED`` on models with a BPDA surrogate,
    ``BPDA_STRONGER``, ``TRANSFER_STRONGER``), each with its codes deduplicated and sorted, in the order of ``flags``;
    labels are joined by ``", "`` unless one of them holds a comma (then ``"; "``). ``defence`` names what the
    attacks' exact gradient went through (``"NRPM"`` for the reprogramming models, e.g. ``"the forged threshold"``
    for another); ``adaptive_command`` is the command quoted for the adaptive suite. None when no label has a flag.
    """
    if not isinstance(defence, str) or not defence.strip():
        raise TorchRobustError(f"upper_bound_note: defence={defence!r}; pass the name of the defence the white-box "
                               "gradient went through, e.g. defence='NRPM'")
    flagged = {label: sorted({str(c) for c in codes}) for label, codes in flags.items()}
    flagged = {label: codes for label, codes in flagged.items() if codes}
    if not flagged:
        return None
    sep = "; " if any("," in label for label in flagged) else ", "
    which = sep.join(f"{label} ({', '.join(codes)})" for label, codes in flagged.items())
    return (f"**Upper bounds** for {which}: the attacks followed the exact gradient through {defence}, which "
            f"misleads them; the adaptive suite (`{adaptive_command}`: BPDA, transfer) finds lower robust accuracy "
            "(docs/adaptive-evaluation.md).")


@dataclass
class SweepResult:
    """Per-example results of an ε sweep.

    ``clean[i]``: example i correct without attack. ``robust[attack][j, i]``: correct under ``attack`` at
    ``eps[j]``. ``worst[j, i]``: correct under every attack at ``eps[j]`` (the reported robust accuracy).
    """

    threat: str
    eps: list[float]
    attacks: list[str]
    clean: torch.Tensor
    robust: dict[str, torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.clean.numel())

    @property
    def worst(self) -> torch.Tensor:
        out = self.clean.unsqueeze(0).expand(len(self.eps), -1).clone()
        for r in self.robust.values():
            out &= r
        return out

    @property
    def reliable(self) -> bool:
        return not self.flags

    @property
    def strength(self) -> str:
        """``"weak"`` when every attack is weak (FGSM, or PGD with one restart and < 50 steps), else ``"strong"``."""
        return str(self.config.get("strength", "weak"))

    def accuracy(self, attack: str | None = None) -> list[float]:
        """Accuracy per ε for ``attack`` (None: the worst case over all attacks)."""
        r = self.worst if attack is None else self.robust[attack]
        return [float(v) for v in r.float().mean(1)]

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        worst = self.accuracy()
        for j, e in enumerate(self.eps):
            row: dict[str, Any] = {"eps": e}
            for a in self.attacks:
                row[a] = float(self.robust[a][j].float().mean())
            row["worst_case"] = worst[j]
            rows.append(row)
        return rows

    def table(self, title: str | None = None) -> Table:
        """The accuracy-vs-ε table (ε, one ``PERCENT`` column per attack, ``worst_case``) with its notes:
        **UNRELIABLE** when flags were raised, the weak-attack warning, the accuracy line."""
        notes = [] if self.reliable else ["**UNRELIABLE**: gradient-masking flags raised: "
                                          + ", ".join(f["code"] for f in self.flags)]
        if self.strength == "weak":
            notes.append(WEAK_NOTE)
        return accuracy_table(self.rows(), title=title or self._title(), note="\n\n".join(notes) or None)

    def to_markdown(self, title: str | None = None) -> str:
        """``results.md``: the title, the notes and the table (accuracies in %)."""
        return self.table(title).to_markdown()

    def to_dict(self, per_example: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "threat": self.threat, "eps": self.eps, "attacks": self.attacks, "n_examples": self.n,
            "clean_accuracy": float(self.clean.float().mean()), "table": self.rows(),
            "columns": self.table().schema(),
            "seconds": self.seconds, "config": self.config, "flags": self.flags,
            "checks_run": bool(self.config.get("checks", False)), "reliable": self.reliable,
            "strength": self.strength,
        }
        if per_example:
            d["per_example"] = {"clean": self.clean.int().tolist(),
                                **{a: r.int().tolist() for a, r in self.robust.items()}}
        return d

    def write(self, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
        """Write ``results.csv``, ``.md``, ``accuracy_vs_eps.png`` and, last, ``results.json`` (per-example
        included; ``columns`` is the table's schema, see :mod:`torchrobust.tables`)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = self.table(title).write(out, "results", formats=("csv", "md"))
        paths["png"] = plot_accuracy_vs_eps({"": self}, out / "accuracy_vs_eps.png", title=title or self._title())
        # last: a results.json marks a finished run (the CLI refuses to overwrite it, and resumes without it)
        atomic_write_bytes(out / "results.json", (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        paths["json"] = out / "results.json"
        return paths

    def _title(self) -> str:
        return f"Robust accuracy vs ε ({self.threat}, n={self.n})"


def markdown_table(rows: Sequence[Mapping[str, Any]], percent: Sequence[str] = ()) -> str:
    """A GitHub-Markdown table of ``rows`` (dicts sharing keys); columns in ``percent`` shown as xx.x %."""
    if not rows:
        return ""
    return Table.from_rows(rows, {c: ColumnKind.PERCENT for c in percent}).markdown_grid()


def accuracy_table(rows: Sequence[Mapping[str, Any]], title: str = "", note: str | None = None) -> Table:
    """The accuracy-vs-ε table of ``rows``: ``eps`` a number, every other column a ``PERCENT`` (accuracies as
    fractions) except a column holding text (e.g. ``reliable``: ``TEXT``); ``note`` and :data:`ACCURACY_NOTE`
    above the grid."""

    def kind(c: str) -> ColumnKind:
        if c == "eps":
            return ColumnKind.FLOAT
        vals = [r[c] for r in rows if r.get(c) is not None]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        return ColumnKind.PERCENT if numeric else ColumnKind.TEXT

    kinds = {c: Column(c, kind(c)) for r in rows for c in r}
    return Table.from_rows(rows, kinds, title=title or None, notes=tuple(n for n in (note, ACCURACY_NOTE) if n))


def write_table_files(stem: Path, rows: Sequence[Mapping[str, Any]], title: str = "",
                      note: str | None = None) -> dict[str, Path]:
    """Write ``stem.csv`` and ``stem.md`` (accuracies as percentages) atomically: :func:`accuracy_table`."""
    stem = Path(stem)
    return accuracy_table(rows, title, note).write(stem.parent, stem.name, formats=("csv", "md"))


def plot_accuracy_vs_eps(results: Mapping[str, SweepResult], path: str | Path, title: str = "") -> Path:
    """One line per (model, attack) and a bold line for each model's worst case; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["--", ":", "-.", (0, (3, 1, 1, 1))]
    for k, (label, res) in enumerate(results.items()):
        color = colors[k % len(colors)]
        prefix = f"{label}: " if label else ""
        for i, a in enumerate(res.attacks):
            ax.plot(res.eps, [100 * v for v in res.accuracy(a)], ls=styles[i % len(styles)], marker="o", ms=3,
                    lw=1, color=color, alpha=0.7, label=f"{prefix}{a}")
        ax.plot(res.eps, [100 * v for v in res.accuracy()], lw=2.5, color=color, label=f"{prefix}worst case")
    ax.set_xlabel(f"ε ({next(iter(results.values())).threat})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title("\n".join(textwrap.wrap(title, 75)), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


#: the default attack set: the per-example worst case over APGD-CE and APGD-T (AutoAttack's white-box pair,
#: APGD-T on APGD-CE's survivors) plus FGSM, kept as the papers' protocol column
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "apgd-ce", "apgd-t")
#: attacks run only on the points the earlier attacks at the same ε left robust (AutoAttack's protocol)
SURVIVORS_ONLY: tuple[str, ...] = ("apgd-t", "square")


def plan_jobs(attacks: Sequence[str], eps: Sequence[float], threat: str = "Linf",
              attack_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
              survivors_only: Sequence[str] = SURVIVORS_ONLY) -> list[Job]:
    """The engine's jobs of a sweep: every attack at every ε > 0, in the given attack order within each ε."""
    attack_kwargs = attack_kwargs or {}
    return [Job(a, threat, float(e), kwargs=dict(attack_kwargs.get(a, {})), survivors_only=a in survivors_only)
            for e in eps if float(e) > 0 for a in attacks]


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str] = DEFAULT_ATTACKS,
          eps: Sequence[float] = (0.0, 0.1, 0.2, 0.3), threat: str = "Linf",
          attack_kwargs: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 500, seed: int = 0,
          progress: bool = False, state: str | Path | None = None,
          survivors_only: Sequence[str] = SURVIVORS_ONLY) -> SweepResult:
    """Clean and robust accuracy of ``model`` on ``(x, y)`` for each attack name × ε, run by the evaluation engine
    (:func:`torchrobust.evaluate.engine.run_plan`).

    ``attack_kwargs[name]`` are passed to :func:`torchrobust.attacks.create` (e.g. ``{"pgd": {"steps": 20}}``).
    ε = 0 is not attacked (its robust accuracy is the clean accuracy). Attacks named in ``survivors_only`` run only
    on the points the earlier attacks at the same ε left robust, so their column is cumulative (robust after them
    and every earlier attack), as AutoAttack reports. ``state``: a path stem for the resumable state (see the
    engine). The result's ``strength`` is ``"weak"`` when every attack is weak (FGSM, or PGD with one restart and
    fewer than 50 steps): such a table overstates robustness. Two checks always run (``flags``): ``NONFINITE``
    (NaN/inf weights or logits) and ``BPDA_NOT_EVALUATED`` (a module declares a BPDA surrogate — NRPM layers,
    forged thresholds — so the exact-gradient attacks here give an upper bound; run
    :func:`torchrobust.evaluate.adaptive.evaluate_adaptive`, CLI ``evaluate --suite adaptive``).
    """
    from .. import attacks as A

    if not attacks:
        raise TorchRobustError("no attacks given; pass at least one of: " + ", ".join(A.list_attacks()))
    if isinstance(eps, (int, float)):
        eps = [eps]
    if not len(eps):
        raise TorchRobustError("no eps given; pass at least one budget, e.g. eps=[0, 0.1, 0.3]")
    for e in eps:
        check_eps(e)
    attack_kwargs = {k: dict(v) for k, v in (attack_kwargs or {}).items()}
    eps_f = [float(e) for e in eps]
    jobs = plan_jobs(attacks, eps_f, threat, attack_kwargs, survivors_only)
    if not jobs:  # only ε = 0: nothing to attack, but the inputs and attack names are still checked
        validate_jobs([Job(a, threat, 0.0) for a in attacks], {})
        from .metrics import correct

        clean = correct(model, x, y, batch_size).cpu()
        res = PlanResult(jobs=[], clean=clean, correct={}, seconds={}, counts={})
    else:
        res = run_plan(model, x, y, jobs, batch_size=batch_size, seed=seed, state=state, progress=progress)
    robust: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    for a in attacks:
        rows = []
        for e in eps_f:
            if e == 0:
                rows.append(res.clean.clone())
                continue
            # (survivors-only columns are cumulative: robust after this attack and every earlier one at this ε)
            rows.append(res.column(Job(a, threat, e).key))
        robust[a] = torch.stack(rows)
        keys = [j.key for j in jobs if j.label == a]
        seconds[a] = float(sum(res.seconds[k] for k in keys))
        counts[a] = {c: int(sum(res.counts[k].get(c, 0) for k in keys)) for c in ("forward", "gradient")}
    config = {"threat": threat, "eps": eps_f, "attacks": list(attacks), "attack_kwargs": attack_kwargs,
              "survivors_only": [a for a in attacks if a in survivors_only], "seed": seed, "batch_size": batch_size,
              "n_examples": len(x), "world_size": D.world_size(), "counts": counts,
              "strength": result_strength([Job(a, threat, 1.0, kwargs=attack_kwargs.get(a, {})) for a in attacks])}
    from .checks import check_bpda_evaluated, check_finite

    # always, checks or not: NaN/inf weights or logits make every number void; and a model whose modules declare
    # a BPDA surrogate (NRPM layers, forged thresholds) was attacked here through its exact gradient only, which
    # such defences obfuscate, so its numbers are upper bounds until the adaptive suite (BPDA, transfer) has run
    flags = [f.to_dict() for f in (check_finite(model, x[:64]), check_bpda_evaluated(model, False)) if f is not None]
    return SweepResult(threat=threat, eps=eps_f, attacks=list(attacks), clean=res.clean, robust=robust,
                       seconds=seconds, config=config, flags=flags)
