"""Evaluation: clean/robust accuracy per example, ε sweeps, worst case across attacks, result files."""

from .metrics import accuracy, correct, predict, robust_correct
from .sweep import SweepResult, markdown_table, plot_accuracy_vs_eps, sweep, write_table_files

__all__ = ["accuracy", "correct", "predict", "robust_correct", "SweepResult", "sweep", "markdown_table",
           "plot_accuracy_vs_eps", "write_table_files"]
