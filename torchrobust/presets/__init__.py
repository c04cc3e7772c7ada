"""Ready-to-run presets that combine the three defences' own experiment code: :mod:`.cifar10` (the papers' CIFAR-10
experiments, for a GPU). This layer sits above :mod:`torchrobust.experiments`, :mod:`torchrobust.psat` and
:mod:`torchrobust.robustbench`, which may not import each other."""
