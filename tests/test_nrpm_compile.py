"""One process, one compiled NRPM model, many λ, K, batch sizes and modes (the recompile-limit pitfall: a λ sweep
followed by paradigm-2 training once crashed with FailOnRecompileLimitHit)."""

from __future__ import annotations

import pytest
import torch

import torchrobust as tr
from torchrobust.nn.nrpm import compiler_available
from torchrobust.reprogramming import set_K, set_lam


@pytest.mark.skipif(not compiler_available("cpu"), reason="torch.compile (inductor) is not usable on this machine")
def test_lambda_and_K_sweep_with_training_never_hits_the_recompile_limit():
    torch.manual_seed(0)
    m = tr.models.create("mlp", widths=[32, 16])
    r = tr.reprogram(m, lam=0.5, K=1, backend="compiled", learn_lam=True)
    eager = tr.reprogram(m, lam=0.5, K=1, backend="eager")
    for i in range(14):
        set_lam(r, i / 13)
        set_lam(eager, i / 13)
        set_K(r, 1 + i % 4)
        set_K(eager, 1 + i % 4)
        for B in (1, 7, 64, 100 + i):
            x = torch.rand(B, 1, 28, 28)
            out = r(x)
            out.sum().backward()
            with torch.no_grad():
                assert torch.allclose(out, eager(x), rtol=1e-4, atol=1e-4)
    lam_grads = [p.grad for n, p in r.named_parameters() if "lam" in n]
    assert lam_grads and all(g is not None and torch.isfinite(g).all() for g in lam_grads)
