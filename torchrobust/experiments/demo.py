"""The README's main job (``torchrobust demo``): train, reprogram, attack, report — on the bundled MNIST.

1. Train the robustness-reprogramming paper's MNIST MLP (784-256-64-10, no activation: a linear classifier
   under LPM) with standard training.
2. Reprogram it with NRPM, paradigm 1: the same weights, λ and K fixed, nothing trained.
3. Reprogram a copy with NRPM, paradigm 3: weights and λ fine-tuned for ``p3_steps`` steps on FGSM examples
   (the paper's mixed loss CE(x) + CE(x_adv), ε = 0.3), starting from the paradigm-1 model (λ = ``lam``; the
   paper code's paradigm-3 run starts at sigmoid(0.6) ≈ 0.65), λ kept in [0, 1]. Adam at ``p3_lr`` = 2e-4: the
   presets' recipe (λ from 0.5, lr 2e-3) fell below the 85 % clean floor with the paper's IRLS ε.
4. Attack all three with the default attack set of :func:`torchrobust.evaluate.sweep` — FGSM (the paper's
   protocol column), APGD-CE and APGD-T on APGD-CE's survivors (100 iterations each, AutoAttack's white-box pair),
   ℓ∞, white-box through the IRLS iterations — over ``eps`` (default: the paper's grid 0, .05, …, .3) on the
   first ``n_test`` test images, keeping the per-example worst case. The evaluation is resumable (``state_*``
   files in the output folder).
5. Write the results folder: the checkpoints, ``results.{json,csv,md}`` and ``accuracy_vs_eps.png``.

Both NRPM models use the paper's MLP setting of the IRLS damping, ε = 5e-5 in ``1/(|a_d x_d - z/D| + ε)``
(``mnist_mlp.py --e 5e-5``, docs/paper-code-facts.md). Determinism: one thread, seeded training and attacks, so
the same machine and software give the same table on every run. The NRPM kernels are ``backend="auto"``: the
compiled (inductor) kernels where a C++ compiler works, else the eager ones, which are about 6× slower on CPU
and differ from the compiled ones by up to ~1e-4 in the logits - enough to move the paradigm-3 fine-tuning and
so the table. The CPU's vector width changes the compiled kernels' summation order (inductor emits AVX2 or AVX-512
code, and the NRPM ∂x kernel picks its loop layout by vector width) and so, through the fine-tuning, the table as
well. ``results.json`` records which kernels ran (``nrpm.kernels``) and the CPU capability torch dispatched to
(``machine.cpu_capability``, :func:`torch.backends.cpu.get_cpu_capability`); the README's table is for compiled
kernels on an AVX2 CPU and says how far other kernels and CPUs moved it.

The defaults (200 images, 7 ε) keep the job near 8 minutes of CPU on one thread: APGD-T through NRPM costs 900
forward/backward passes per robust point, and with the paper's IRLS ε many points survive APGD-CE at ε ≤ 0.1,
so the image count is what the time budget buys — never a weaker attack.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_bytes, save
from ..errors import TorchRobustError
from ..evaluate import SweepResult, plot_accuracy_vs_eps, sweep, write_table_files
from ..evaluate.sweeps import WEAK_NOTE, accuracy_table, upper_bound_note

__all__ = ["run_demo", "comparison_rows", "machine_fingerprint"]

log = logging.getLogger(__name__)

EPS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]  # the paper's MNIST grid (Tables 1, 7, 8)
N_TEST = 200
IRLS_EPS = 5e-5  # the paper's MLP code (mnist_mlp.py --e 5e-5)
BACKEND = "auto"  # compiled NRPM kernels where a compiler works (see the module docstring)
P3_LR = 2e-4
MIN_CLEAN = 0.85  # every model of the demo's table is at least this accurate on clean inputs (tests/test_demo.py)


def comparison_rows(results: dict[str, SweepResult]) -> list[dict[str, Any]]:
    """One row per ε; per model its FGSM accuracy (the papers' column) and its worst case over every attack."""
    first = next(iter(results.values()))
    rows = []
    for j, e in enumerate(first.eps):
        row: dict[str, Any] = {"eps": e}
        for label, res in results.items():
            if "fgsm" in res.attacks:
                row[f"{label} FGSM"] = res.accuracy("fgsm")[j]
            row[f"{label} worst"] = res.accuracy()[j]
        rows.append(row)
    return rows


def demo_note(results: dict[str, SweepResult], strength: str) -> str | None:
    """The note above the demo's table: which models' numbers the sweep's checks mark as upper bounds (NRPM layers
    declare a BPDA surrogate the default attacks do not use: ``BPDA_NOT_EVALUATED``), and the weak-attack warning
    when the attacks were shortened."""
    upper = upper_bound_note({label: [str(f["code"]) for f in res.flags] for label, res in results.items()},
                             defence="NRPM")
    notes = [upper] if upper else []
    if strength == "weak":
        notes.append(WEAK_NOTE)
    return "\n\n".join(notes) or None


def machine_fingerprint() -> dict[str, str]:
    """What decides the demo's float rounding besides the seed: the CPU capability torch's kernels dispatch to
    (``DEFAULT``/``AVX2``/``AVX512``, also the vector width inductor compiles for), torch's version and the CPU
    architecture. The same values give the same table; the README says which values its table is for."""
    import platform

    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "arch": platform.machine()}


def run_demo(out_dir: str | Path, epochs: int = 3, n_test: int = N_TEST, steps: int | None = None, seed: int = 0,
             lam: float = 0.7, K: int = 3, p3_steps: int = 100, data_root: str | None = None,
             progress: bool = True, eps: list[float] | None = None, p3_lr: float = P3_LR) -> dict[str, Path]:
    """Run the main job into ``out_dir``; ``steps``: APGD iterations (None: 100, the reference's; fewer is weaker
    and is said so in the table's strength label). Returns the paths written."""
    import copy

    import torch

    from .. import data, models
    from ..reprogramming import learned_lams, reprogram, set_paradigm
    from ..train import TrainConfig, fit

    if isinstance(p3_steps, bool) or not isinstance(p3_steps, int) or p3_steps < 1:
        raise TorchRobustError(f"p3_steps (paradigm-3 fine-tuning steps) must be an integer >= 1, got {p3_steps!r}; "
                               "the demo's paradigm 3 needs at least one step (100 is the default)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    train = data.load("mnist", "train", root=data_root)
    x, y = data.as_tensors(data.load("mnist", "test", root=data_root), n_test)

    torch.manual_seed(seed)
    model = models.create("mlp", widths=[256, 64], activation=None)
    cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, seed=seed,
                      progress=progress)
    tr = fit(model, train, cfg)
    save(model, out / "mlp.safetensors", training=cfg.to_dict(), history=tr.history, train_seconds=tr.seconds)

    from ..nn.nrpm import compiler_available

    kernels = "compiled" if compiler_available("cpu") else "eager"
    nrpm = {"irls_eps": IRLS_EPS, "backend": BACKEND}
    robust = reprogram(model, lam=lam, K=K, **nrpm)
    save(robust, out / "mlp_nrpm_p1.safetensors", reprogram={"lam": lam, "K": K, "irls_eps": IRLS_EPS, "paradigm": 1})

    # Paradigm 3 on an independent copy (reprogram shares weights with its source; fine-tuning must not touch it).
    p3 = reprogram(copy.deepcopy(model), lam=lam, K=K, learn_lam=True, inplace=True, **nrpm)
    cfg3 = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=p3_lr, mode="fgsm", eps=0.3, mixed=True,
                       seed=seed, max_batches=p3_steps, progress=progress)
    tr3 = fit(p3, train, cfg3, params=set_paradigm(p3, 3))
    lams3 = learned_lams(p3)
    save(p3, out / "mlp_nrpm_p3.safetensors", training=cfg3.to_dict(), learned_lams=lams3, paradigm=3,
         train_seconds=tr3.seconds)

    label_plain, label_p1, label_p3 = "LPM", f"NRPM-P1(λ={lam:g})", "NRPM-P3"
    results: dict[str, SweepResult] = {}
    eps_grid = list(EPS if eps is None else eps)
    attack_kwargs = {a: {"steps": steps} for a in ("apgd-ce", "apgd-t")} if steps is not None else {}
    for label, stem, m in ((label_plain, "plain", model), (label_p1, "p1", robust), (label_p3, "p3", p3)):
        t0 = time.perf_counter()
        results[label] = sweep(m, x, y, eps=eps_grid, threat="Linf", attack_kwargs=attack_kwargs, seed=seed,
                               progress=progress, state=out / f"state_{stem}")
        log.info("%s evaluated in %.1fs", label, time.perf_counter() - t0)

    for label, res in results.items():
        clean = float(res.clean.float().mean())
        if clean < MIN_CLEAN:
            log.warning("%s: clean accuracy %.1f %% is below the demo's %.0f %% floor", label, 100 * clean,
                        100 * MIN_CLEAN)
    rows = comparison_rows(results)
    strength = "weak" if any(r.strength == "weak" for r in results.values()) else "strong"
    title = (f"MNIST, 784-256-64-10 linear MLP (K={K}, IRLS ε={IRLS_EPS:g}), first {len(x)} test images, ℓ∞; "
             f"worst = per-example worst case over FGSM, APGD-CE and APGD-T ({steps or 100} iterations, white-box "
             "through NRPM)")
    paths = write_table_files(out / "results", rows, title=title, note=demo_note(results, strength))
    doc = {"title": title, "table": rows, "columns": accuracy_table(rows).schema(), "strength": strength,
           "seconds_total": time.perf_counter() - t_all,
           "train": {"config": cfg.to_dict(), "history": tr.history, "seconds": tr.seconds},
           "paradigm3": {"config": cfg3.to_dict(), "learned_lams": lams3, "seconds": tr3.seconds},
           "nrpm": {"K": K, "irls_eps": IRLS_EPS, "backend": BACKEND, "kernels": kernels, "p1_lam": lam,
                    "p3_lam_init": lam},
           "machine": machine_fingerprint(),
           "models": {k: v.to_dict() for k, v in results.items()}}
    paths["png"] = plot_accuracy_vs_eps(results, out / "accuracy_vs_eps.png", title=title)
    # last: a results.json marks a finished demo
    atomic_write_bytes(out / "results.json", (json.dumps(doc, indent=1) + "\n").encode())
    paths["json"] = out / "results.json"
    paths["ckpt_plain"] = out / "mlp.safetensors"
    paths["ckpt_p1"] = out / "mlp_nrpm_p1.safetensors"
    paths["ckpt_p3"] = out / "mlp_nrpm_p3.safetensors"
    return paths
