"""Issue 12: ``reprogram``, ``forge`` and ``evaluate.sweep`` are functions; their modules are named differently."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

import torchrobust as tr


@pytest.mark.parametrize(("module", "function"), [
    ("torchrobust.reprogramming", "reprogram"),
    ("torchrobust.forging", "forge"),
    ("torchrobust.evaluate.sweeps", "sweep"),
])
def test_modules_are_modules_and_functions_stay_functions(module: str, function: str) -> None:
    m = importlib.import_module(module)
    assert isinstance(m, types.ModuleType)
    owner = tr.evaluate if function == "sweep" else tr
    f = getattr(owner, function)
    assert callable(f) and not isinstance(f, types.ModuleType)
    assert f is getattr(m, function)


def test_import_as_binds_the_module() -> None:
    import torchrobust.forging as fm
    import torchrobust.reprogramming as rm
    from torchrobust.reprogramming import set_lam

    assert isinstance(rm, types.ModuleType) and isinstance(fm, types.ModuleType)
    assert set_lam is rm.set_lam
    assert not isinstance(tr.reprogram, types.ModuleType) and not isinstance(tr.forge, types.ModuleType)


@pytest.mark.parametrize("old", ["torchrobust.reprogram", "torchrobust.forge", "torchrobust.evaluate.sweep",
                                 "torchrobust.forge.surgery"])
def test_old_module_paths_are_gone(old: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_functions_survive_importing_their_modules_first() -> None:
    code = ("import torchrobust.reprogramming, torchrobust.forging, torchrobust.evaluate.sweeps, types\n"
            "import torchrobust as tr\n"
            "assert not any(isinstance(f, types.ModuleType) for f in (tr.reprogram, tr.forge, tr.evaluate.sweep))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
