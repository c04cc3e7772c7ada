"""Evaluation: clean/robust accuracy per example, ε sweeps, worst case across attacks, result files."""

from .adaptive import AdaptiveResult, evaluate_adaptive, undefended_base
from .metrics import accuracy, correct, predict, robust_correct
from .suite import SUITES, evaluate
from .sweeps import SweepResult, markdown_table, plot_accuracy_vs_eps, sweep, write_table_files

__all__ = ["AdaptiveResult", "evaluate_adaptive", "undefended_base", "evaluate", "SUITES",
           "accuracy", "correct", "predict", "robust_correct", "SweepResult", "sweep", "markdown_table",
           "plot_accuracy_vs_eps", "write_table_files"]
