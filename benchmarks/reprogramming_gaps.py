"""Experiments behind docs/reprogramming-gaps.md: what explains the Paradigm-1 gaps between our MNIST reproductions
of *Robustness Reprogramming* (Hou et al., ICLR 2025) and the paper's Paradigm-1 rows: Table 1 (K = 1, every λ < 1)
and Table 8 (K ≥ 2), in the groups of :data:`GROUPS`.

Paradigm 1 trains nothing beyond the standard-trained 784-256-64-10 MLP backbone, so a gap can only come from

* the NRPM layer itself (``--impl``: our eager and compiled kernels against the paper code's computation written
  out literally below, :class:`PaperLiteralMLP`, on the same weights and images);
* the backbone: its training budget (``--epochs``: snapshots of one run, taken after those epochs), its
  learning rate (``--lr``: the presets' 0.01, or the paper code's 1e-3) and its seed (``--seeds``);
* ε of the IRLS weights (``--irls-eps``; the paper's MLP script uses 5e-5, its Algorithm 2 1e-3);
* the evaluation subset: every cell is stored on the first 1000 test images (the paper code's set) and on all
  ``--n-test`` images.

Each cell (implementation, seed, epochs, IRLS ε, λ, K) is one FGSM sweep at the paper's ε grid through the presets'
own building blocks (``load_mnist``, ``linear_mlp``, ``PresetContext.train``, ``reprogram``, ``fgsm_sweep``), written
to ``OUT/cells/*.json`` as soon as it is done; backbones are checkpointed under ``OUT/models``. A rerun into the
same ``--out`` recomputes nothing that is there, and each run's report covers every cell in the folder (so
several invocations with different factors add up to one table). The report is ``OUT/gaps.md`` (summary and
per-cell tables), ``OUT/gaps.json``; the summary is also printed.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/reprogramming_gaps.py --out results/gaps \
        --seeds 0 --epochs 1 5 50 --irls-eps 5e-5 1e-3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchrobust import checkpoint
from torchrobust.errors import TorchRobustError
from torchrobust.experiments.paper_numbers import EPS_GRID, PAPER
from torchrobust.experiments.reprogramming import BACKBONE_SPECS
from torchrobust.experiments.reprogramming_protocol import (
    PROFILES,
    PresetContext,
    fgsm_sweep,
    linear_mlp,
    load_mnist,
)
from torchrobust.io import atomic_write_bytes
from torchrobust.reprogramming import reprogram
from torchrobust.tables import Column, ColumnKind, Table

logger = logging.getLogger("benchmarks.reprogramming_gaps")

#: the gap cells (λ, K) per group; (1.0, 0) is the LPM backbone itself (its FGSM fragility is a factor too)
#: (p1 and t8 were the first two; p1hi and t8lo complete Paradigm 1: every λ of Table 1, every K ≥ 2 row of Table 8)
GROUPS: dict[str, tuple[tuple[float, int], ...]] = {
    "lpm": ((1.0, 0),),
    "p1": tuple((lam, 1) for lam in (0.4, 0.3, 0.2, 0.1, 0.0)),
    "t8": tuple((lam, K) for lam in (0.9, 0.8, 0.7) for K in (2, 3, 4)),
    "p1hi": tuple((lam, 1) for lam in (0.9, 0.8, 0.7, 0.6, 0.5)),
    "t8lo": tuple((lam, K) for lam in (0.6, 0.5) for K in (2, 3, 4)),
}
GROUP_TITLES = {"lpm": "LPM backbone (λ = 1)", "p1": "Table 1, Paradigm 1, λ ≤ 0.4 (K = 1)",
                "t8": "Table 8, λ ≥ 0.7, K ≥ 2", "p1hi": "Table 1, Paradigm 1, λ ≥ 0.5 (K = 1)",
                "t8lo": "Table 8, λ ≤ 0.6, K ≥ 2"}
#: the gap groups of the summary (every group but the backbone itself), in this order
GAP_GROUPS = tuple(g for g in GROUPS if g != "lpm")
#: the paper code's evaluation set: the first 1000 test images
PAPER_N = 1000
#: implementations of ``--impl``: the library's NRPM backends, and the paper code's computation written literally
IMPLS = ("compiled", "eager", "literal")


def paper_cell(lam: float, K: int) -> list[float]:
    """The paper's FGSM accuracies (%) of one cell: Table 8 for K ≥ 2, Table 1 otherwise."""
    if K == 0:
        return PAPER["table1"]["Normal-train"]
    return PAPER["table8"][(lam, K)] if K >= 2 else PAPER["table1"][f"P1 λ={lam:.1f}"]


# ------------------------------------------------------------------------------------------------ the paper's layer
class PaperLiteralMLP(nn.Module):
    """The paper code's ``RobustLinear``/``RobustSum`` (``mnist_mlp.py``, norm ``L21``; docs/paper-code-facts.md)
    on the weights of ``backbone``, written as the code computes it: the product tensor ``P = x_d a_d`` (B, out, in),
    K times ``w = 1/(|P − z/D| + ε)``, ``w = normalize(w, p=1)``, ``z = D·Σ w P``; output ``λ z⁽⁰⁾ + (1 − λ) z + b``;
    autograd through every step. Only for the comparison with the library's kernels (it builds the whole product
    tensor)."""

    def __init__(self, backbone: nn.Module, lam: float, K: int, irls_eps: float) -> None:
        super().__init__()
        self.backbone, self.lam, self.K, self.irls_eps = backbone, lam, K, irls_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for lin in self.backbone.linears:
            W = lin.weight
            D = W.shape[1]
            z0 = h @ W.T
            z = z0
            P = h.unsqueeze(1) * W.unsqueeze(0)
            for _ in range(self.K):
                w = F.normalize(1 / ((P - z.unsqueeze(-1) / D).abs() + self.irls_eps), p=1, dim=-1)
                z = D * (w * P).sum(-1)
            h = self.lam * z0 + (1 - self.lam) * z + lin.bias
        return h


# ------------------------------------------------------------------------------------------------ backbones
@dataclass(frozen=True)
class Setting:
    """One factor setting: the backbone (seed, epochs, learning rate), the IRLS ε and the NRPM implementation."""

    seed: int
    epochs: int
    irls_eps: float
    impl: str
    lr: float = 0.01

    @property
    def label(self) -> str:
        return f"seed {self.seed}, lr {self.lr:g}, {self.epochs} ep, ε_IRLS {self.irls_eps:g}, {self.impl}"

    @property
    def stem(self) -> str:
        """The backbone's part of a file name (the presets' lr 0.01 is left out)."""
        return f"s{self.seed}-e{self.epochs}" + ("" if self.lr == 0.01 else f"-lr{self.lr:g}")


def backbone_path(out: Path, seed: int, epochs: int, lr: float) -> Path:
    return out / "models" / f"mlp-{Setting(seed, epochs, 0.0, '', lr).stem}.safetensors"


def backbones(out: Path, ctx: PresetContext, seed: int, epochs: Sequence[int], n_train: int,
              lr: float = 0.01) -> dict[int, Path]:
    """Standard-trained MLP backbones of ``seed`` after each of ``epochs`` (the presets' recipe: SGD, momentum
    0.9, batch 64, no schedule, at ``lr``), snapshots of one run to ``max(epochs)``; existing ones are reused (a
    checkpoint trained with another recipe is refused)."""
    want = {"experiment": "reprogramming_gaps", "seed": seed, "n_train": n_train, "lr": lr, "batch_size": 64}
    paths = {e: backbone_path(out, seed, e, lr) for e in epochs}
    for e, p in paths.items():
        if p.is_file():
            meta = checkpoint.load_metadata(p).get("metadata") or {}
            if {k: meta.get(k) for k in want} != want or meta.get("epochs") != e:
                raise TorchRobustError(f"{p} was trained with another recipe ({meta}); delete it or use another --out")
    missing = [e for e, p in paths.items() if not p.is_file()]
    if not missing:
        return paths
    model = linear_mlp(3, seed)
    last = max(missing)

    def snapshot(rec: dict[str, float]) -> None:
        e = int(rec["epoch"])
        if e in missing:
            checkpoint.save(model, paths[e], spec=BACKBONE_SPECS["mlp"], **want, epochs=e,
                            train_acc=round(rec["train_acc"], 5))

    t0 = time.perf_counter()
    ctx.train(model, epochs=last, lr=lr, on_epoch=snapshot, tag=f"seed {seed}")
    logger.info("seed %d: trained %d epochs in %.0f s", seed, last, time.perf_counter() - t0)
    return paths


# ------------------------------------------------------------------------------------------------ cells
def cell_path(out: Path, s: Setting, lam: float, K: int, n: int) -> Path:
    return out / "cells" / f"{s.impl}-{s.stem}-eps{s.irls_eps:g}-lam{lam:g}-K{K}-n{n}.json"


def model_of(backbone: nn.Module, s: Setting, lam: float, K: int) -> nn.Module:
    if K == 0:
        return backbone
    if s.impl == "literal":
        return PaperLiteralMLP(backbone, lam, K, s.irls_eps).eval()
    return reprogram(backbone, lam=lam, K=K, irls_eps=s.irls_eps, backend=s.impl).eval()


def run_cell(out: Path, backbone: nn.Module, s: Setting, lam: float, K: int, x: torch.Tensor,
             y: torch.Tensor) -> dict[str, Any]:
    """FGSM accuracies (%) of one cell on the first 1000 and on all of ``x``; read from its file if it exists."""
    path = cell_path(out, s, lam, K, len(x))
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    batch = 25 if s.impl == "literal" else 500  # the literal form holds K (B, 256, 784) tensors for autograd
    ok = fgsm_sweep(model_of(backbone, s, lam, K), x, y, EPS_GRID, batch_size=batch).float()
    rec = {**asdict(s), "lam": lam, "K": K, "n": len(x), "seconds": round(time.perf_counter() - t0, 2),
           "acc_first1000": [round(100 * float(v), 2) for v in ok[:, :PAPER_N].mean(1)],
           "acc_all": [round(100 * float(v), 2) for v in ok.mean(1)]}
    atomic_write_bytes(path, (json.dumps(rec) + "\n").encode())
    logger.info("%s λ=%g K=%d: %s (%.1f s)", s.label, lam, K, rec["acc_first1000"], rec["seconds"])
    return rec


def run(out: Path, *, seeds: Sequence[int], epochs: Sequence[int], irls_eps: Sequence[float],
        impls: Sequence[str] = ("compiled",), groups: Sequence[str] = tuple(GROUPS),
        cells: Sequence[tuple[float, int]] | None = None, n_test: int = 10000, n_train: int | None = None,
        lr: float = 0.01, threads: int = 1) -> list[dict[str, Any]]:
    """Train/load the backbones (at ``lr``) and evaluate every cell of ``seeds × epochs × irls_eps × impls ×
    (groups' cells or cells)`` not yet in ``out``; returns the records of all cells in ``out/cells``."""
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise TorchRobustError(f"--impl {bad[0]!r} is not one of {', '.join(IMPLS)}; pass one of them")
    torch.set_num_threads(threads)
    prof = replace(PROFILES["fast"], n_train=n_train)
    x_tr, y_tr, x_te, y_te = load_mnist(prof, 0)  # the training subset (if any) does not depend on the seed
    x, y = x_te[:n_test], y_te[:n_test]
    todo = list(cells) if cells is not None else [c for g in groups for c in GROUPS[g]]
    for seed in seeds:
        ctx = PresetContext(profile=prof, seed=seed, progress=False, x_train=x_tr, y_train=y_tr, x_test=x_te,
                            y_test=y_te, device=torch.device("cpu"))
        paths = backbones(out, ctx, seed, epochs, len(x_tr), lr)
        for e in epochs:
            net = checkpoint.load(paths[e]).eval()
            for eps in irls_eps:
                for impl in impls:
                    for lam, K in todo:
                        run_cell(out, net, Setting(seed, e, eps, impl, lr), lam, K, x, y)
    return load_cells(out)


def load_cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


# ------------------------------------------------------------------------------------------------ report
def _setting(rec: dict[str, Any]) -> Setting:
    return Setting(rec["seed"], rec["epochs"], rec["irls_eps"], rec["impl"], rec.get("lr", 0.01))


def _order(s: Setting) -> tuple[Any, ...]:
    return s.impl != "compiled", s.impl, s.lr != 0.01, s.lr, s.seed, s.epochs, s.irls_eps


def _diffs(recs: Sequence[dict[str, Any]], key: str) -> list[float]:
    """ours − paper over the attacked budgets (ε > 0) of every record."""
    return [o - p for r in recs for o, p in zip(r[key][1:], paper_cell(r["lam"], r["K"])[1:], strict=True)]


def summary_table(records: Sequence[dict[str, Any]]) -> Table:
    """One row per setting and evaluation-set size: the backbone's clean and ε = .05 FGSM accuracy, and per gap
    group the mean (ours − paper) over its cells and ε > 0 on the first 1000 and on all images, and the largest
    |ours − paper| (first 1000). Only the gap groups with at least one cell in ``records`` get columns."""
    settings = sorted({(_setting(r), r["n"]) for r in records}, key=lambda sn: (*_order(sn[0]), sn[1]))
    groups = [g for g in GAP_GROUPS if any((r["lam"], r["K"]) in GROUPS[g] for r in records)]
    cols = [Column("setting", ColumnKind.TEXT), Column("n", ColumnKind.INT, label="images (all)"),
            Column("lpm_clean", digits=1, label="LPM clean", missing="–"),
            Column("lpm_05", digits=1, label="LPM ε=.05 (paper 31.8)", missing="–")]
    for g in groups:
        cols += [Column(f"{g}_mean1k", digits=1, label=f"{g}: mean Δ, 1000", missing="–"),
                 Column(f"{g}_meanall", digits=1, label=f"{g}: mean Δ, all", missing="–"),
                 Column(f"{g}_max1k", digits=1, label=f"{g}: max abs Δ, 1000", missing="–")]
    rows = []
    for s, n in settings:
        mine = [r for r in records if _setting(r) == s and r["n"] == n]
        row: dict[str, Any] = {"setting": s.label, "n": n}
        lpm = [r for r in records if r["K"] == 0 and _setting(r).stem == s.stem]
        if lpm:
            row["lpm_clean"], row["lpm_05"] = lpm[0]["acc_first1000"][0], lpm[0]["acc_first1000"][1]
        for g in groups:
            recs = [r for r in mine if (r["lam"], r["K"]) in GROUPS[g]]
            if recs:
                d1k, dall = _diffs(recs, "acc_first1000"), _diffs(recs, "acc_all")
                row[f"{g}_mean1k"], row[f"{g}_meanall"] = statistics.fmean(d1k), statistics.fmean(dall)
                row[f"{g}_max1k"] = max(abs(d) for d in d1k)
        rows.append(row)
    return Table(cols, rows, title="Gap summary: ours − paper, FGSM accuracy points",
                 notes=("mean Δ: mean of (ours − paper) over the group's cells and ε ∈ {.05, …, .3}; "
                        + "; ".join(f"{g} = {GROUP_TITLES[g]}: (λ, K) ∈ "
                                    + ", ".join(f"({lam:g}, {K})" for lam, K in GROUPS[g]) for g in groups)
                        + ". 1000: the first 1000 test images (the paper code's set); all: every evaluated image.",))


def cells_table(records: Sequence[dict[str, Any]], group: str) -> Table:
    """Every cell of ``group``: per (λ, K) the paper's row, then one row per setting (first 1000 images)."""
    eps_cols = [Column(f"e{j}", digits=1, label=f"ε={e:g}") for j, e in enumerate(EPS_GRID)]
    cols = [Column("cell", ColumnKind.TEXT), Column("setting", ColumnKind.TEXT), *eps_cols]
    rows = []
    for lam, K in GROUPS[group]:
        # one row per setting: its first-1000 accuracies are the same whatever the evaluated set's size
        by_setting = {_setting(r): r for r in records if (r["lam"], r["K"]) == (lam, K)}
        recs = [by_setting[s] for s in sorted(by_setting, key=_order)]
        if not recs:
            continue
        cell = f"λ={lam:g} K={K}"
        rows.append({"cell": cell, "setting": "**paper**", **{f"e{j}": v for j, v in enumerate(paper_cell(lam, K))}})
        rows += [{"cell": "", "setting": _setting(r).label, **{f"e{j}": v for j, v in enumerate(r["acc_first1000"])}}
                 for r in recs]
    return Table(cols, rows, title=f"{GROUP_TITLES[group]}: FGSM accuracy (%), first 1000 test images")


def report(out: Path, records: Sequence[dict[str, Any]]) -> str:
    """Write ``OUT/gaps.md`` and ``OUT/gaps.json`` from ``records``; returns the summary as Markdown."""
    summary = summary_table(records).to_markdown()
    parts = [summary] + [cells_table(records, g).to_markdown() for g in GROUPS]
    atomic_write_bytes(out / "gaps.md", ("\n".join(parts)).encode())
    atomic_write_bytes(out / "gaps.json", (json.dumps({"cells": list(records)}, indent=1) + "\n").encode())
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder (cells and backbones are reused)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="backbone seeds (init and data order)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[5], help="backbone snapshots after these epochs")
    ap.add_argument("--lr", type=float, default=0.01, help="the backbones' SGD learning rate (paper code: 1e-3)")
    ap.add_argument("--irls-eps", type=float, nargs="+", default=[5e-5], help="ε of the IRLS weights")
    ap.add_argument("--impl", nargs="+", default=["compiled"], choices=IMPLS,
                    help="NRPM implementation: the library's compiled or eager backend, or the paper code's "
                         "computation written literally")
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS), help="gap cells to run")
    ap.add_argument("--cells", nargs="+", default=None, metavar="LAM:K",
                    help="run these (λ, K) cells instead of --groups (e.g. 0.9:3 0.1:1)")
    ap.add_argument("--n-test", type=int, default=10000, help="FGSM on the first N test images (≥ 1000 to "
                    "also report the paper's first-1000 set)")
    ap.add_argument("--n-train", type=int, default=None, help="train the backbones on a seeded subset (tests)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from OUT/cells")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cells = None
    if a.cells:
        try:
            cells = [(float(c.split(":")[0]), int(c.split(":")[1])) for c in a.cells]
        except (ValueError, IndexError):
            raise SystemExit(f"--cells {' '.join(a.cells)}: write each cell as LAM:K, e.g. 0.9:3") from None
    t0 = time.perf_counter()
    if a.report_only:
        records = load_cells(a.out)
    else:
        records = run(a.out, seeds=a.seeds, epochs=a.epochs, irls_eps=a.irls_eps, impls=a.impl, groups=a.groups,
                      cells=cells, n_test=a.n_test, n_train=a.n_train, lr=a.lr, threads=a.threads)
    print(report(a.out, records))
    logger.info("done in %.0f s; wrote %s", time.perf_counter() - t0, a.out / "gaps.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
