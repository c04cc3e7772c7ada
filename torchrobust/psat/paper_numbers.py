"""The reference numbers of PSAT (Gong et al. 2023, *Parameter-Saving Adversarial Training*) Tables 3, 4 and 6, as
data (Table 5's are in :mod:`torchrobust.psat.lightweight`).

Transcribed from the paper (arXiv 2309.16207). **These are CIFAR-10 numbers
of the paper's ResNet-50** (hypernetwork members with N_z = 128 for "PSAT"/"Ours", ε = 8/255, 0.5, 12), not MNIST:
:mod:`torchrobust.psat.analysis` shows them beside our MNIST rows for the shape of the comparison only. Accuracies
are in % as printed; the accuracy columns are :data:`COLUMNS`. Nothing here computes anything.
"""

from __future__ import annotations

from torchrobust.attacks.threat import THREAT_NAMES

__all__ = ["COLUMNS", "TABLE3", "TABLE4", "TABLE6", "Table6Row"]

#: The accuracy columns of Tables 3 and 4, in the paper's order: Acc_clean, Acc_ℓ∞, Acc_ℓ2, Acc_ℓ1, Acc^max,
#: Acc^avg, Acc_trade-off (the mean of the six before it).
COLUMNS: tuple[str, ...] = ("clean", *THREAT_NAMES, "max", "avg", "trade_off")


def _r(s: str) -> dict[str, float]:
    """One row as printed: accuracies (%) in :data:`COLUMNS` order."""
    values = [float(v) for v in s.split()]
    return dict(zip(COLUMNS, values, strict=True))


#: Table 3 ("Member analysis"): single hypernetwork members, PSAT (the three AT members, lowest entropy) and PSAT
#: with the standard-trained member appended (four members). CIFAR-10, ResNet-50.
TABLE3: dict[str, dict[str, float]] = {
    "H_NAT": _r("90.24 0.00 0.21 0.08 0.00 0.10 15.10"),
    "H_Linf": _r("84.05 42.48 53.34 23.72 23.39 39.85 44.47"),
    "H_L2": _r("86.85 26.71 62.70 52.11 25.14 47.17 50.11"),
    "H_L1": _r("89.02 0.02 0.99 77.70 0.00 26.24 32.33"),
    "PSAT": _r("82.28 40.33 60.28 68.13 40.78 56.32 58.02"),
    "PSAT + H_NAT": _r("90.18 0.00 0.12 0.01 0.00 0.04 15.06"),
}

#: Table 4 ("Inference strategy"): PSAT's lowest-entropy output against the members' average. CIFAR-10, ResNet-50.
TABLE4: dict[str, dict[str, float]] = {
    "entropy": _r("82.28 40.33 60.28 68.13 40.78 56.32 58.02"),
    "average": _r("82.65 42.63 61.82 68.70 14.28 57.69 54.63"),
}

#: One row of Table 6: (model group, method, Acc_trade-off %, "# of Paras", "Paras Saving" as a fraction with our
#: sign convention — positive = fewer parameters than a single ResNet-50, negative = more; ``None`` where the paper
#: prints "-").
Table6Row = tuple[str, str, float, int, float | None]

#: Table 6 ("Comparison with direct aggregation"): the paper's single models are *multi-norm* trained ResNet-50s
#: (AT_max, AT_avg, AT_msd, MNG-AC); the direct aggregate is three single-perturbation ResNet-50s (3 × 23.547M);
#: "Ours" is PSAT at N_z = 64 and 128. CIFAR-10.
TABLE6: tuple[Table6Row, ...] = (
    ("Single model", "AT_max", 55.48, 23_547_000, None),
    ("Single model", "AT_avg", 54.67, 23_547_000, None),
    ("Single model", "AT_msd", 54.97, 23_547_000, None),
    ("Single model", "AT_mng", 56.84, 23_552_000, -0.0002),
    ("Direct aggregate", "-", 59.74, 70_642_000, -2.0),
    ("Ours", "z-64", 56.81, 1_765_000, 0.9251),
    ("Ours", "z-128", 58.02, 4_874_000, 0.7930),
)
