"""End-to-end cost of NRPM layers (issue 13): one epoch of Paradigm-3 fine-tuning of the paper's MLP on MNIST,
and the Table 1 preset of *Robustness Reprogramming for Representation Learning* (Hou et al., ICLR 2025).

The script runs whatever ``torchrobust`` is first on ``PYTHONPATH``: the current code, or an older checkout (e.g. a
``git worktree`` of the commit before the NRPM speed work) for the "before" column. Each run writes one JSON
record; ``report`` renders the records as markdown tables (docs/nrpm-end-to-end.md).

* ``epoch``: the paper's 3-layer linear MLP (784-256-64-10, no activation; App. C.2) is trained normally for
  ``--backbone-epochs`` (untimed), then reprogrammed (every Linear an NRPM layer, λ init 0.5, K = 1, IRLS ε = 5e-5,
  λ learned) and fine-tuned for one epoch in Paradigm 3 exactly as the Table 1 preset does it
  (:func:`torchrobust.train.fit`: Adam lr 2e-3 on weights and λ, FGSM ε = 0.3 with the mixed loss, batch 64),
  here on all ``--n-train`` training images instead of the preset's 100 steps. Timed: the ``fit`` call (wall and
  this process's CPU seconds). ``--max-batches N`` stops after N optimiser steps and projects the epoch's time
  as ``N``-step time × steps per epoch / N (for the slow variants; the record says so). ``--lpm`` fine-tunes the
  plain MLP the same way, without NRPM: the part of the epoch NRPM does not cost.
* ``table1``: :func:`torchrobust.experiments.reprogramming.run` of the ``table1`` preset (fast profile: both
  backbones trained, Paradigm 1 λ sweep, Paradigms 2 and 3 trained, FGSM and PGD-20 columns), with the NRPM
  backend of ``--backend`` (the profile's own when omitted); wall/CPU seconds of the whole call and the preset's
  own per-phase wall times, grouped.
* ``report``: the records as tables, with the speed-up against the record labelled ``--baseline``.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/nrpm_end_to_end.py epoch --backend auto --label after \\
        --json /tmp/e2e/epoch_after.json
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/nrpm_before python benchmarks/nrpm_end_to_end.py epoch --backend eager \\
        --label before --json /tmp/e2e/epoch_before.json
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/nrpm_end_to_end.py table1 --backend auto --n-test 1000 \\
        --n-pgd 100 --label after --json /tmp/e2e/t1_after.json
    PYTHONPATH=. python benchmarks/nrpm_end_to_end.py report /tmp/e2e/*.json --baseline before
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

BACKENDS = ("auto", "compiled", "eager", "reference")
#: the Table 1 preset's phases (``result["timings"]`` keys, by prefix) grouped for the report
PHASES = (("backbones", ("train normal", "train adv")),
          ("eval baselines", ("eval Normal-train", "eval Adv-train")),
          ("eval P1 λ sweep", ("eval P1",)),
          ("paradigm 2", ("train paradigm 2", "eval Paradigm 2")),
          ("paradigm 3", ("train paradigm 3", "eval Paradigm 3")))

log = logging.getLogger("nrpm_end_to_end")


# ------------------------------------------------------------------------------------------------ helpers
def _code_version() -> dict[str, str]:
    """Where the imported ``torchrobust`` lives and its git commit (the "before"/"after" of a record)."""
    import torchrobust

    root = Path(torchrobust.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "torchrobust"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev, dirty = "unknown", ""
    return {"root": str(root), "commit": rev + ("+dirty" if dirty else "")}


def _reprogramming_api() -> Any:
    """The module with ``reprogram``/``set_paradigm``: ``torchrobust.reprogramming`` (renamed from
    ``torchrobust.reprogram`` after the NRPM speed work; the older name keeps the "before" checkout runnable)."""
    try:
        return importlib.import_module("torchrobust.reprogramming")
    except ImportError:
        return importlib.import_module("torchrobust.reprogram")


def _reprogram(model: torch.nn.Module, backend: str, K: int, lam: float, irls_eps: float) -> torch.nn.Module:
    api = _reprogramming_api()
    # the IRLS damping is ``irls_eps`` now, ``eps`` in the older code
    key = "irls_eps" if "irls_eps" in inspect.signature(api.reprogram).parameters else "eps"
    return api.reprogram(model, lam=lam, K=K, learn_lam=True, inplace=True, backend=backend, **{key: irls_eps})


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic write (temporary file + rename) of one record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _machine() -> dict[str, Any]:
    return {"loadavg": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


# ------------------------------------------------------------------------------------------------ epoch
def run_epoch(args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of Paradigm-3 fine-tuning (the Table 1 preset's recipe) on ``args.n_train`` MNIST images."""
    from torchrobust import data
    from torchrobust.evaluate.metrics import accuracy
    from torchrobust.experiments.reprogramming import linear_mlp
    from torchrobust.train import TrainConfig, fit

    x_tr, y_tr = data.as_tensors(data.load("mnist", "train"))
    x_te, y_te = data.as_tensors(data.load("mnist", "test"))
    if args.n_train < len(x_tr):
        idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(args.seed))[: args.n_train]
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    x_te, y_te = x_te[: args.n_test], y_te[: args.n_test]
    steps_epoch = math.ceil(len(x_tr) / args.batch_size)
    steps = steps_epoch if args.max_batches is None else min(args.max_batches, steps_epoch)

    backbone = linear_mlp(3, args.seed)  # the preset's backbone recipe (ctx.train: SGD lr 0.01, momentum 0.9)
    t0 = time.perf_counter()
    fit(backbone, (x_tr, y_tr), TrainConfig(epochs=args.backbone_epochs, batch_size=args.batch_size, optimizer="sgd",
                                            lr=0.01, momentum=0.9, seed=args.seed))
    backbone_s = time.perf_counter() - t0

    if args.lpm:  # the same fine-tuning of the plain (LPM) MLP: what the epoch costs without NRPM
        model, params = copy.deepcopy(backbone), None
    else:
        model = _reprogram(copy.deepcopy(backbone), args.backend, args.K, args.lam, args.irls_eps)
        params = _reprogramming_api().set_paradigm(model, 3)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="adam", lr=2e-3, mode="fgsm", eps=0.3,
                      mixed=True, seed=args.seed, max_batches=args.max_batches)
    load0 = _machine()
    w0, c0 = time.perf_counter(), time.process_time()
    res = fit(model, (x_tr, y_tr), cfg, params=params)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    model.eval()
    last = res.history[-1]
    rec: dict[str, Any] = {
        "kind": "epoch", "label": args.label, "backend": "none (LPM)" if args.lpm else args.backend,
        "code": _code_version(),
        "n_train": len(x_tr), "batch_size": args.batch_size, "K": args.K, "lam0": args.lam, "irls_eps": args.irls_eps,
        "steps": steps, "steps_per_epoch": steps_epoch, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "epoch_wall_s": round(wall * steps_epoch / steps, 1), "epoch_cpu_s": round(cpu * steps_epoch / steps, 1),
        "projected": steps < steps_epoch, "loss": float(last["loss"]), "train_acc": float(last["train_acc"]),
        "backbone_s": round(backbone_s, 2), "machine_start": load0, "machine_end": _machine(),
    }
    if not rec["projected"] and args.n_test > 0:  # clean test accuracy of the fine-tuned model (untimed)
        rec["test_acc"] = accuracy(model, x_te, y_te)
        rec["n_test"] = len(x_te)
    return rec


# ------------------------------------------------------------------------------------------------ table1
def run_table1(args: argparse.Namespace) -> dict[str, Any]:
    """The ``table1`` preset end to end, with the NRPM backend ``args.backend`` (the profile's when None)."""
    rp = importlib.import_module("torchrobust.experiments.reprogramming")
    profiles = rp.PROFILES  # the dict ``run`` looks profiles up in (one object in every version)
    base = profiles[args.profile]
    name = args.profile
    if args.backend is not None and args.backend != base.backend:
        name = f"{args.profile}-{args.backend}"  # the profile with another NRPM backend, registered for this call
        profiles[name] = replace(base, backend=args.backend)
    load0 = _machine()
    w0, c0 = time.perf_counter(), time.process_time()
    # the PGD-20 column this benchmark documents (the presets' default became the strong evaluation; older code
    # versions have no robust_eval and always ran PGD-20)
    pgd20 = {"robust_eval": "pgd20"} if "robust_eval" in inspect.signature(rp.run).parameters else {}
    try:
        result = rp.run("table1", args.out, n_test=args.n_test, n_pgd=args.n_pgd, profile=name, seed=args.seed,
                        threads=args.threads, **pgd20)
    finally:
        if name != args.profile:
            del profiles[name]
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    timings: dict[str, float] = result["timings"]
    phases = {ph: round(sum(v for k, v in timings.items() if k.startswith(prefixes)), 1) for ph, prefixes in PHASES}
    rows = {r["row"]: r for r in result["rows"]}
    return {
        "kind": "table1", "label": args.label, "backend": args.backend or base.backend, "code": _code_version(),
        "profile": args.profile, "n_test": args.n_test, "n_pgd": args.n_pgd, "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1), "phases": phases, "timings": timings,
        "paradigm3_fgsm": rows["Paradigm 3"]["fgsm"], "paradigm3_pgd20": rows["Paradigm 3"].get("pgd20"),
        "machine_start": load0, "machine_end": _machine(),
    }


# ------------------------------------------------------------------------------------------------ report
def _speedup(rec: dict[str, Any], base: dict[str, Any] | None, key: str) -> float | None:
    if base is None or not rec.get(key) or not base.get(key):
        return None
    return round(base[key] / rec[key], 2)


def report(records: Sequence[dict[str, Any]], baseline: str | None) -> str:
    """Markdown tables of the epoch and table1 records (speed-ups: baseline CPU seconds / the row's)."""
    from torchrobust.tables import Column, ColumnKind, Table

    def text(*names: str) -> list[Column]:
        return [Column(n, ColumnKind.TEXT) for n in names]

    def common(r: dict[str, Any]) -> dict[str, Any]:
        return {"variant": r["label"], "code": r["code"]["commit"], "backend": r["backend"],
                "load": f"{r['machine_start']['loadavg'][0]:.1f} → {r['machine_end']['loadavg'][0]:.1f}"}

    speed = Column("speedup", ColumnKind.FLOAT, digits=1, label=f"CPU speed-up vs {baseline} (×)")
    load = Column("load", ColumnKind.TEXT, label="load avg (1 min) start → end")
    out = []
    epochs = [r for r in records if r["kind"] == "epoch"]
    base = next((r for r in epochs if r["label"] == baseline), None)
    if epochs:
        rows = [{**common(r), "speedup": _speedup(r, base, "epoch_cpu_s"),
                 "timed": f"{r['steps']} of {r['steps_per_epoch']} batches" + (", projected" if r["projected"] else ""),
                 "wall": r["epoch_wall_s"], "cpu": r["epoch_cpu_s"],
                 "loss": None if r["projected"] else r["loss"],
                 "train_acc": None if r["projected"] else r["train_acc"], "test_acc": r.get("test_acc")}
                for r in epochs]
        cols = [*text("variant", "code", "backend", "timed"), Column("wall", ColumnKind.SECONDS, label="epoch wall"),
                Column("cpu", ColumnKind.SECONDS, label="epoch CPU"), speed,
                Column("loss", ColumnKind.FLOAT, digits=4, label="final loss"),
                Column("train_acc", ColumnKind.PERCENT, label="train acc"),
                Column("test_acc", ColumnKind.PERCENT, label="clean test acc"), load]
        out.append(Table(cols, rows).markdown_grid())
    tabs = [r for r in records if r["kind"] == "table1"]
    base = next((r for r in tabs if r["label"] == baseline), None)
    if tabs:
        rows = [{**common(r), "speedup": _speedup(r, base, "cpu_s"),
                 "protocol": f"{r['profile']}: FGSM {r['n_test']}, PGD-20 {r['n_pgd']}",
                 "wall": r["wall_s"], "cpu": r["cpu_s"], **{ph: r["phases"][ph] for ph, _ in PHASES},
                 "p3": r["paradigm3_fgsm"][2] / 100} for r in tabs]
        cols = [*text("variant", "code", "backend", "protocol"), Column("wall", ColumnKind.SECONDS, label="wall"),
                Column("cpu", ColumnKind.SECONDS, label="CPU"), speed,
                *(Column(ph, ColumnKind.SECONDS, label=f"{ph} wall") for ph, _ in PHASES),
                Column("p3", ColumnKind.PERCENT, label="P3 FGSM ε=0.1"), load]
        out.append(Table(cols, rows).markdown_grid())
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("epoch", "table1"):
        p = sub.add_parser(cmd)
        p.add_argument("--label", required=True, help="the variant's name in the report (e.g. before, after)")
        p.add_argument("--json", type=Path, required=True, help="write the record here")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ep = sub.choices["epoch"]
    ep.add_argument("--backend", choices=BACKENDS, default="auto")
    ep.add_argument("--lpm", action="store_true", help="no NRPM: fine-tune the plain MLP the same way (the floor)")
    ep.add_argument("--n-train", type=int, default=60000)
    ep.add_argument("--n-test", type=int, default=10000, help="clean test accuracy after a full epoch (0: skip)")
    ep.add_argument("--max-batches", type=int, default=None, help="time this many steps and project the epoch")
    ep.add_argument("--backbone-epochs", type=int, default=1)
    ep.add_argument("--batch-size", type=int, default=64)
    ep.add_argument("--K", type=int, default=1, help="IRLS steps (Table 1: 1)")
    ep.add_argument("--lam", type=float, default=0.5, help="λ init (Table 1: 0.5)")
    ep.add_argument("--irls-eps", type=float, default=5e-5, help="IRLS ε (the paper code's MLP value)")
    t1 = sub.choices["table1"]
    t1.add_argument("--backend", choices=BACKENDS, default=None, help="NRPM backend (default: the profile's)")
    t1.add_argument("--n-test", type=int, default=10000)
    t1.add_argument("--n-pgd", type=int, default=1000)
    t1.add_argument("--profile", choices=("fast", "quick"), default="fast",
                    help="the preset's profile (fast: the documented Table 1 run; quick: a smoke test)")
    t1.add_argument("--out", type=Path, default=Path("results/nrpm_e2e_table1"))
    rp = sub.add_parser("report")
    rp.add_argument("records", nargs="+", type=Path)
    rp.add_argument("--baseline", default=None, help="label of the record the speed-ups are relative to")
    return ap


def _validate(args: argparse.Namespace) -> None:
    if args.cmd == "epoch":
        for name in ("n_train", "batch_size", "backbone_epochs"):
            if getattr(args, name) < 1:
                ap_error(f"--{name.replace('_', '-')} must be >= 1")
        if args.max_batches is not None and args.max_batches < 1:
            ap_error("--max-batches must be >= 1")
        if not (0 <= args.lam <= 1 and math.isfinite(args.irls_eps) and args.irls_eps > 0 and args.K >= 0):
            ap_error("need 0 <= --lam <= 1, --irls-eps > 0 and --K >= 0")
    if args.cmd == "table1" and not (1 <= args.n_test <= 10000 and 0 <= args.n_pgd <= 10000):
        ap_error("--n-test must be in 1..10000 and --n-pgd in 0..10000")


def ap_error(msg: str) -> None:
    """One-line error, exit status 2."""
    sys.stderr.write(f"nrpm_end_to_end: error: {msg}\n")
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _validate(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "report":
        missing = [str(p) for p in args.records if not p.is_file()]
        if missing:
            ap_error(f"no such record: {', '.join(missing)}")
        sys.stdout.write(report([json.loads(p.read_text(encoding="utf-8")) for p in args.records], args.baseline))
        return 0
    torch.set_num_threads(args.threads)
    rec = run_epoch(args) if args.cmd == "epoch" else run_table1(args)
    _write_json(args.json, rec)
    log.info("%s", json.dumps({k: v for k, v in rec.items() if k not in ("timings", "machine_start", "machine_end")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
