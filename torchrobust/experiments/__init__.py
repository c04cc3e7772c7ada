"""The papers' experiments as presets (data + model + defence + evaluation wired together).

* :mod:`~torchrobust.experiments.demo` — the README's main job (``torchrobust demo``).
* :mod:`~torchrobust.experiments.reprogramming` — the reprogramming paper's MNIST tables (``torchrobust paper``).
* :mod:`~torchrobust.experiments.adaptive_reprogramming` — the reprogrammed models under the adaptive suite.
* :mod:`~torchrobust.experiments.workflows` — checkpoint-to-checkpoint defences (``torchrobust reprogram``).
* :mod:`~torchrobust.experiments.evaluation` — checkpoint-to-results evaluation (``torchrobust evaluate``/``certify``).
"""
