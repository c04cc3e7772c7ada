"""The reference numbers of *Robustness Reprogramming for Representation Learning* (Hou et al., ICLR 2025), as data.

Transcribed from the paper's MNIST tables; :mod:`torchrobust.experiments.reprogramming` reports them beside our
numbers. Accuracies are in % at the FGSM budgets ε = 0, .05, …, .3 (:data:`EPS_GRID`) unless stated. Nothing here
computes anything: the presets and their protocol stay in :mod:`torchrobust.experiments.reprogramming`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EPS_GRID", "TABLE1", "TABLE1_LAMS", "TABLE2", "TABLE3", "TABLE7", "TABLE8", "PAPER"]

#: The paper's FGSM budgets on MNIST (the columns of every accuracy row below).
EPS_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def _r(s: str) -> list[float]:
    """One table row as written in the paper: accuracies (%) at the :data:`EPS_GRID` budgets."""
    return [float(v) for v in s.split()]


#: Table 1: 3-layer linear MLP, rows by method (Paradigm 1 rows by λ, K = 1).
TABLE1: dict[str, list[float]] = {
    "Normal-train": _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    "Adv-train": _r("76.4 66.0 57.6 46.9 35.0 23.0 9.1"),
    "P1 λ=1.0": _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    "P1 λ=0.9": _r("90.8 56.6 17.9 8.5 4.6 3.0 2.3"),
    "P1 λ=0.8": _r("90.4 67.1 30.8 17.4 10.6 6.5 4.5"),
    "P1 λ=0.7": _r("89.7 73.7 43.5 25.5 16.9 11.7 9.2"),
    "P1 λ=0.6": _r("88.1 75.3 49.0 31.0 22.0 15.5 12.4"),
    "P1 λ=0.5": _r("84.1 74.4 50.0 31.9 22.8 18.1 14.3"),
    "P1 λ=0.4": _r("78.8 70.4 48.3 33.9 24.1 18.4 14.6"),
    "P1 λ=0.3": _r("69.5 62.6 45.2 31.5 23.1 19.0 15.5"),
    "P1 λ=0.2": _r("58.5 53.2 38.2 27.6 22.2 16.4 12.9"),
    "P1 λ=0.1": _r("40.7 38.3 29.7 22.8 16.8 12.9 11.1"),
    "P1 λ=0.0": _r("18.8 17.6 16.4 14.6 12.4 10.7 9.4"),
    "Paradigm 2": _r("81.5 75.3 61.2 44.7 33.7 26.0 20.1"),
    "Paradigm 3": _r("86.1 81.7 75.8 66.7 58.7 50.1 39.8"),
}


#: Table 1: the learned [λ1, λ2, λ3] of Paradigms 2 and 3.
TABLE1_LAMS: dict[str, list[float]] = {"Paradigm 2": [0.459, 0.033, 0.131], "Paradigm 3": [0.925, 0.119, 0.325]}


#: Table 2: Paradigm 2 under FGSM training, ε_train -> (accuracies, learned [λ1, λ2, λ3]).
TABLE2: dict[float, tuple[list[float], list[float]]] = {
    0.0: (_r("91.3 75.7 45.0 24.9 14.9 10.5 8.0"), [0.955, 0.706, 0.722]),
    0.05: (_r("91.2 76.8 50.6 27.8 16.6 10.5 8.1"), [0.953, 0.624, 0.748]),
    0.1: (_r("91.0 82.6 62.5 41.7 26.4 19.8 14.9"), [0.936, 0.342, 0.700]),
    0.15: (_r("90.6 82.3 66.8 49.4 35.0 25.5 19.9"), [0.879, 0.148, 0.599]),
    0.2: (_r("90.3 82.5 67.5 49.3 35.8 27.0 21.3"), [0.724, 0.076, 0.420]),
    0.25: (_r("87.7 81.0 66.0 48.5 36.4 26.6 21.6"), [0.572, 0.049, 0.243]),
    0.3: (_r("81.5 75.3 61.2 44.7 33.7 26.0 20.1"), [0.459, 0.033, 0.131]),
}


#: Table 7 (App. C.2): 1/2/3-layer linear MLPs, LPM vs NRPM (Paradigm 3).
TABLE7: dict[str, list[float]] = {
    "1 Layer LPM": _r("91.1 12.0 7.1 0.5 0.0 0.0 0.0"),
    "1 Layer NRPM": _r("87.6 14.0 13.6 12.9 12.1 11.5 10.3"),
    "2 Layers LPM": _r("91.6 32.9 2.6 0.2 0.0 0.0 0.0"),
    "2 Layers NRPM": _r("89.1 37.0 34.2 30.7 25.8 22.7 21.2"),
    "3 Layers LPM": _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    "3 Layers NRPM": _r("90.7 47.2 45.1 37.8 30.8 24.9 21.1"),
}


#: Table 8 (App. C.4): Paradigm 1, (λ, K) -> accuracies; K = 0 is the LPM model.
TABLE8: dict[tuple[float, int], list[float]] = {
    (0.9, 0): _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    (0.9, 1): _r("90.8 56.6 17.9 8.5 4.6 3.0 2.3"),
    (0.9, 2): _r("90.7 76.1 44.0 26.8 18.0 13.4 9.3"),
    (0.9, 3): _r("90.7 82.1 56.7 37.4 26.3 19.9 16.3"),
    (0.9, 4): _r("90.6 83.5 61.1 42.7 29.4 22.7 18.0"),
    (0.8, 0): _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    (0.8, 1): _r("90.4 67.1 30.8 17.4 10.6 6.5 4.5"),
    (0.8, 2): _r("90.4 81.1 56.2 36.2 26.0 19.3 15.5"),
    (0.8, 3): _r("90.3 81.4 61.8 42.9 31.8 23.7 19.5"),
    (0.8, 4): _r("90.3 82.5 64.3 45.6 33.1 25.3 22.0"),
    (0.7, 0): _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    (0.7, 1): _r("89.7 73.7 43.5 25.5 16.9 11.7 9.2"),
    (0.7, 2): _r("89.1 80.3 56.4 39.7 28.4 21.4 18.5"),
    (0.7, 3): _r("88.9 80.3 61.8 44.0 33.2 24.4 19.2"),
    (0.7, 4): _r("88.4 79.6 61.3 43.6 33.9 26.3 21.4"),
    (0.6, 0): _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    (0.6, 1): _r("88.1 75.3 49.0 31.0 22.0 15.5 12.4"),
    (0.6, 2): _r("86.2 77.1 56.2 39.3 29.2 22.6 17.1"),
    (0.6, 3): _r("85.5 75.9 55.8 40.2 30.7 23.1 18.8"),
    (0.6, 4): _r("84.0 74.7 56.2 39.6 29.4 22.1 18.7"),
    (0.5, 0): _r("90.8 31.8 2.6 0.0 0.0 0.0 0.0"),
    (0.5, 1): _r("84.1 74.4 50.0 31.9 22.8 18.1 14.3"),
    (0.5, 2): _r("80.3 71.0 53.5 37.0 26.9 21.5 16.4"),
    (0.5, 3): _r("79.0 69.6 53.7 38.1 29.2 23.2 19.5"),
    (0.5, 4): _r("77.7 66.6 51.2 37.9 29.7 23.7 19.8"),
}


#: Table 3: per-layer embedding difference between clean and FGSM (ε = 0.3) inputs, model -> layer -> (ℓ1,
#: "ℓ2" (squared ℓ2, see :mod:`torchrobust.evaluate.embeddings`), ℓ∞).
TABLE3: dict[str, dict[str, tuple[float, float, float]]] = {
    "LPM-LeNet": {
        "x": (93.21, 27.54, 0.30), "z1": (271.20, 116.94, 1.56), "z2": (79.52, 62.17, 1.89),
        "z3": (18.77, 22.56, 2.32), "z4": (9.84, 18.95, 3.34),
    },
    "NRPM-LeNet": {
        "x": (90.09, 26.67, 0.30), "z1": (167.52, 58.55, 1.19), "z2": (19.76, 4.27, 0.56),
        "z3": (3.63, 0.98, 0.50), "z4": (2.21, 0.79, 0.57),
    },
}


#: Every table by preset name (the key :mod:`torchrobust.experiments.reprogramming` looks numbers up by).
PAPER: dict[str, Any] = {
    "table1": TABLE1,
    "table1_lams": TABLE1_LAMS,
    "table2": TABLE2,
    "table7": TABLE7,
    "table8": TABLE8,
    "table3": TABLE3,
}
