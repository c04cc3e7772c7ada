"""NRPM layers: drop-in robust replacements for ``nn.Linear`` / ``nn.Conv2d`` (Robustness Reprogramming).

Hou et al., ICLR 2025, Sec. 3.2 / Algorithm 1 (hybrid ``λ·z_LPM + (1−λ)·z_NRPM``) and Sec. 4 (three
reprogramming paradigms). :meth:`NRPMLinear.from_module` / :meth:`NRPMConv2d.from_module` wrap a trained layer
*sharing* its ``weight`` and ``bias`` Parameters (the same objects), and :meth:`to_module` gives back the exact
original module object, so reprogramming is reversible and costs no copy.

λ parametrisation (``lam_parametrization``):

* ``"clamp"`` (default, recommended): the Parameter ``lam_raw`` *is* λ; it is used as-is in ``forward`` and kept in
  [0, 1] by :meth:`project_`, which a training loop calls after every optimiser step (torchrobust's trainer calls
  ``m.project_()`` on every module that has it). Gradients are those of λ itself, and λ can reach 0 or 1 exactly.
* ``"sigmoid"``: the Parameter ``lam_logit`` is θ with λ = sigmoid(θ), as in the paper code's ``--paradigm 2``. λ is
  in (0, 1) by construction; λ = 0 or 1 are stored as θ = ∓inf (exact, but an optimiser with weight decay would
  turn them into NaN: prefer "clamp" for learning from the endpoints).
* ``"raw"`` (faithful-replication option, **not recommended**): the Parameter ``lam_unbounded`` is λ, used as-is and
  never projected (:meth:`project_` is a no-op), so training can move λ out of [0, 1]: λ < 0 extrapolates beyond
  pure NRPM, λ > 1 beyond the plain layer. This reproduces a quirk of the paper's MLP code: its ``--paradigm 1``
  (the paper's Paradigm 2, λ learned, weights frozen) uses ``lmbd`` raw, with no sigmoid and no clamp, while its
  logs print ``sigmoid(lmbd)`` (docs/paper-code-facts.md, "Quirks to avoid reproducing by accident", item 1: kept
  behind this explicit option). The constructor, ``from_module``, :func:`torchrobust.reprogramming.reprogram` and
  the ``lam`` setter accept any finite λ for it; the functional :func:`~torchrobust.nn.nrpm.nrpm_linear` /
  :func:`~torchrobust.nn.nrpm.nrpm_conv2d` check a *float* λ against [0, 1], so the layer always passes a tensor.
``learn_lam`` sets ``requires_grad`` of the λ Parameter (paradigms 2 and 3 of Sec. 4; paradigm 1 keeps it fixed).

The conv bias is added (the paper's ``RobustConv2d`` silently drops it); ``drop_bias=True`` reproduces that.

BPDA surrogate. Both layers declare the BPDA protocol of :mod:`torchrobust.nn.forged`: the class attribute
``bpda_surrogate = "irls_fixed"`` and a per-instance boolean ``straight_through`` (default ``False``), so
``with torchrobust.nn.forged.bpda_mode(model):`` and :class:`torchrobust.attacks.BPDA` switch them. In
straight-through mode the forward output is bit-for-bit unchanged and the backward holds the normalised IRLS
weights ``u`` of the final iteration constant: ``∂z/∂p_d = λ + (1 − λ)·D·u_d`` (Algorithm 1's hybrid with
eq. 7's weights frozen; Athalye, Carlini & Wagner 2018, Sec. 4.1 BPDA). It is computed memory-bounded inside the
NRPM kernels (see :mod:`torchrobust.nn.nrpm`), never on the full product tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust.errors import TorchRobustError
from torchrobust.nn.nrpm import BACKENDS, nrpm_conv2d, nrpm_linear
from torchrobust.validation import check_irls_eps, check_irls_steps, check_lam, renamed_argument

__all__ = ["NRPMLinear", "NRPMConv2d", "LamParametrization", "IRLS_EPS", "check_lam_parametrization"]


class LamParametrization(str, Enum):
    """How an NRPM layer stores λ (see the module docstring); a ``str`` enum, so ``"clamp"`` keeps working."""

    CLAMP = "clamp"  #: the Parameter is λ, projected back into [0, 1] after each optimiser step
    SIGMOID = "sigmoid"  #: the Parameter is θ with λ = sigmoid(θ)
    RAW = "raw"  #: the Parameter is λ, never projected: it can leave [0, 1] (the paper code's quirk; not recommended)

    def __str__(self) -> str:
        return self.value


_PARAMETRIZATIONS = tuple(p.value for p in LamParametrization)

#: the attribute that holds the λ Parameter of each parametrisation (distinct names: a state dict of one
#: parametrisation does not load silently into another)
_LAM_ATTR = {"clamp": "lam_raw", "sigmoid": "lam_logit", "raw": "lam_unbounded"}


#: Default IRLS damping ε (the paper's Appendix Algorithm 2).
IRLS_EPS = 1e-3


def check_lam_parametrization(value: Any) -> str:
    """``value`` as the name of a :class:`LamParametrization`, or a one-line :class:`TorchRobustError` naming them."""
    if not isinstance(value, str) or value not in _PARAMETRIZATIONS:
        raise TorchRobustError(f"unknown lam_parametrization {value!r}; valid: {', '.join(_PARAMETRIZATIONS)}")
    return LamParametrization(value).value


def _check(lam: float, K: int, irls_eps: float, lam_parametrization: str, backend: str) -> float:
    """λ, K and ε through the shared checks of :mod:`torchrobust.validation`, then the layer-only options."""
    check_irls_steps(K)
    check_irls_eps(irls_eps)
    check_lam_parametrization(lam_parametrization)
    lam_f = check_lam(lam, bounded=lam_parametrization != LamParametrization.RAW)
    if backend not in BACKENDS:
        raise TorchRobustError(f"unknown NRPM backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return lam_f


class _NRPMMixin(nn.Module):
    """λ storage, projection and bookkeeping shared by the two layers."""

    #: BPDA surrogate used by the backward pass when ``straight_through`` is set (protocol of
    #: :mod:`torchrobust.nn.forged`): the IRLS weights of the final iteration are held constant.
    bpda_surrogate: str = "irls_fixed"
    #: Class-level default; :meth:`_init_nrpm` sets the per-instance flag (also covers modules pickled before
    #: the flag existed).
    straight_through: bool = False
    K: int
    irls_eps: float
    backend: str
    drop_bias: bool
    lam_parametrization: str

    _plain_type: type[nn.Module]
    _hint: str

    @classmethod
    def from_module(
        cls, m: nn.Module, lam: float = 0.5, K: int = 3, irls_eps: float = IRLS_EPS, learn_lam: bool = False,
        drop_bias: bool = False, backend: str = "auto", lam_parametrization: str = "clamp", *,
        eps: float | None = None,
    ) -> Any:
        """Wrap a trained ``nn.Linear`` / ``nn.Conv2d``, sharing its ``weight``/``bias`` Parameter objects (no copy);
        :meth:`to_module` gives back that very object. ``eps`` is the deprecated name of ``irls_eps``."""
        irls_eps = renamed_argument(f"{cls.__name__}.from_module", "eps", "irls_eps", eps, irls_eps, IRLS_EPS)
        if not isinstance(m, cls._plain_type):
            raise TorchRobustError(f"{cls.__name__}.from_module needs an nn.{cls._plain_type.__name__}, got "
                                   f"{type(m).__name__}; {cls._hint}")
        _check(lam, K, irls_eps, lam_parametrization, backend)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._adopt(m)
        self._init_nrpm(lam, K, irls_eps, learn_lam, lam_parametrization, drop_bias, backend)
        self.train(m.training)
        self._set_original(m)
        return self

    def _init_nrpm(
        self, lam: float, K: int, irls_eps: float, learn_lam: bool, lam_parametrization: str, drop_bias: bool,
        backend: str, device: Any = None,
    ) -> None:
        lam_f = _check(lam, K, irls_eps, lam_parametrization, backend)
        self.K = int(K)
        self.irls_eps = float(irls_eps)
        self.backend = backend
        self.drop_bias = bool(drop_bias)
        self.lam_parametrization = LamParametrization(lam_parametrization).value
        self.straight_through = False
        dtype = self.weight.dtype if self.weight.is_floating_point() else torch.get_default_dtype()
        dev = self.weight.device if device is None else device
        if lam_parametrization == LamParametrization.SIGMOID:
            value = torch.logit(torch.tensor(lam_f, dtype=torch.float64)).to(dtype)
        else:  # clamp and raw store λ itself
            value = torch.tensor(lam_f, dtype=dtype)
        setattr(self, _LAM_ATTR[self.lam_parametrization], nn.Parameter(value.to(dev), requires_grad=learn_lam))

    @property
    def eps(self) -> float:
        """Deprecated name of :attr:`irls_eps` (the IRLS damping ε; ``eps`` is the attack radius elsewhere)."""
        warnings.warn("NRPM layer attribute 'eps' is deprecated and will be removed in the next release; use "
                      "'irls_eps'", DeprecationWarning, stacklevel=2)
        return self.irls_eps

    @eps.setter
    def eps(self, value: float) -> None:
        warnings.warn("NRPM layer attribute 'eps' is deprecated and will be removed in the next release; use "
                      "'irls_eps'", DeprecationWarning, stacklevel=2)
        self.irls_eps = check_irls_eps(value)

    # -- λ ------------------------------------------------------------------------------------------------
    @property
    def lam_parameter(self) -> nn.Parameter:
        """The stored λ Parameter (λ itself for "clamp" and "raw", its logit for "sigmoid")."""
        return getattr(self, _LAM_ATTR[self.lam_parametrization])

    def lam_tensor(self) -> Tensor:
        """λ as a 0-d tensor, differentiable w.r.t. the stored Parameter."""
        if self.lam_parametrization == LamParametrization.SIGMOID:
            return torch.sigmoid(self.lam_logit)
        return self.lam_parameter

    @property
    def lam(self) -> float:
        """Current λ (weight of the linear part) as a float."""
        return float(self.lam_tensor().detach())

    @lam.setter
    def lam(self, value: float) -> None:
        lam_f = check_lam(value, bounded=self.lam_parametrization != LamParametrization.RAW)
        with torch.no_grad():
            if self.lam_parametrization == LamParametrization.SIGMOID:
                self.lam_logit.fill_(float(torch.logit(torch.tensor(lam_f, dtype=torch.float64))))
            else:
                self.lam_parameter.fill_(lam_f)

    @property
    def learn_lam(self) -> bool:
        """Whether λ is trainable (``requires_grad`` of the λ Parameter)."""
        return bool(self.lam_parameter.requires_grad)

    @learn_lam.setter
    def learn_lam(self, value: bool) -> None:
        self.lam_parameter.requires_grad_(bool(value))

    @torch.no_grad()
    def project_(self) -> None:
        """Put λ back into [0, 1] (call after each optimiser step). A no-op for "sigmoid" (λ is in (0, 1) anyway)
        and for "raw" (λ is never projected: the paper code's unconstrained λ)."""
        if self.lam_parametrization == LamParametrization.CLAMP:
            self.lam_raw.clamp_(0.0, 1.0)

    def _lam_arg(self) -> Tensor | float:
        lam = self.lam_tensor()
        if self.lam_parametrization == LamParametrization.RAW:
            return lam.detach() if not lam.requires_grad else lam  # a float λ outside [0, 1] would be refused
        if not lam.requires_grad:
            return float(lam)
        return lam

    def _nrpm_repr(self) -> str:
        s = f"lam={self.lam:.4g}, K={self.K}, irls_eps={self.irls_eps:g}"
        if self.learn_lam:
            s += ", learn_lam=True"
        if self.lam_parametrization != LamParametrization.CLAMP:
            s += f", lam_parametrization={self.lam_parametrization!r}"
        if self.drop_bias:
            s += ", drop_bias=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.straight_through:
            s += ", straight_through=True"
        return s

    def _init_new(
        self, make_base: Callable[[], nn.Module], lam: float, K: int, irls_eps: float, learn_lam: bool,
        lam_parametrization: str, drop_bias: bool, backend: str,
    ) -> None:
        """The constructors' shared body: check λ/K/ε first (a bad value allocates nothing), then adopt the weight and
        bias of the fresh plain layer ``make_base()``."""
        _check(lam, K, irls_eps, lam_parametrization, backend)
        self._adopt(make_base())
        self._init_nrpm(lam, K, irls_eps, learn_lam, lam_parametrization, drop_bias, backend)
        self._set_original(None)

    def _adopt(self, m: Any) -> None:
        raise NotImplementedError

    def _new_plain(self) -> nn.Module:
        raise NotImplementedError

    def to_module(self) -> Any:
        """The original plain layer (``nn.Linear`` / ``nn.Conv2d``; the same object, if built by :meth:`from_module`)
        sharing this layer's ``weight`` and ``bias``; λ is discarded."""
        orig = self._original
        if orig is not None:
            return orig
        m = self._new_plain()
        m.weight = self.weight
        m.bias = self.bias
        return m

    def _set_original(self, module: nn.Module | None) -> None:
        # Not registered as a submodule: its Parameters are ours already, and state_dict must not list them twice.
        object.__setattr__(self, "_original", module)


class NRPMLinear(_NRPMMixin):
    """Linear layer with NRPM (Algorithm 1): ``y = λ·W x + (1−λ)·NRPM_K(W, x) + b``.

    Args:
        in_features, out_features, bias, device, dtype: as for :class:`torch.nn.Linear`.
        lam: λ ∈ [0, 1], the weight of the linear part (1 = plain layer); any finite value with
            ``lam_parametrization="raw"``.
        K: IRLS steps (Algorithm 1; the paper's Algorithm 2 uses 3, its scripts 1). K = 0 is the plain layer.
        irls_eps: the damping ε > 0 in the IRLS weight ``1/(|a_d x_d − z/D| + ε)`` (Appendix Algorithm 2);
            ``eps`` is its deprecated old name (accepted with a ``DeprecationWarning`` for one release).
        learn_lam: make λ trainable.
        lam_parametrization: ``"clamp"`` (default), ``"sigmoid"`` or ``"raw"`` (the paper code's unconstrained λ,
            not recommended); see the module docstring.
        drop_bias: ignore the bias (reproduces the paper's conv code; for linear the paper adds it).
        backend: ``"auto"`` | ``"compiled"`` | ``"eager"`` | ``"reference"`` (see :mod:`torchrobust.nn.nrpm`).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, lam: float = 0.5, K: int = 3,
        irls_eps: float = IRLS_EPS, learn_lam: bool = False, lam_parametrization: str = "clamp",
        drop_bias: bool = False, backend: str = "auto", device: Any = None, dtype: Any = None, *,
        eps: float | None = None,
    ) -> None:
        super().__init__()
        irls_eps = renamed_argument("NRPMLinear", "eps", "irls_eps", eps, irls_eps, IRLS_EPS)
        self._init_new(lambda: nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype),
                       lam, K, irls_eps, learn_lam, lam_parametrization, drop_bias, backend)

    def _adopt(self, m: nn.Linear) -> None:
        self.in_features = m.in_features
        self.out_features = m.out_features
        self.weight = m.weight
        self.bias = m.bias

    _plain_type = nn.Linear
    _hint = "use NRPMConv2d.from_module for convolutions"

    def _new_plain(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.drop_bias else self.bias
        return nrpm_linear(x, self.weight, bias, self._lam_arg(), self.K, self.irls_eps, self.backend,
                           straight_through=bool(self.straight_through))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, " + self._nrpm_repr())


class NRPMConv2d(_NRPMMixin):
    """2-D convolution with NRPM per output pixel (Algorithm 1 over the unfolded patch, Appendix A.2).

    Args:
        in_channels … padding_mode, device, dtype: as for :class:`torch.nn.Conv2d`.
        lam, K, irls_eps, learn_lam, lam_parametrization, drop_bias, backend: as for :class:`NRPMLinear`.
        ``drop_bias=True`` reproduces the paper code, whose robust conv never adds its bias.

    Padding: zero padding is part of the patch (``D = C_in/groups·kh·kw``, padded zeros included, as
    ``F.unfold`` gives them). ``padding_mode`` other than ``"zeros"`` and string paddings are applied with
    ``F.pad`` first.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: Any = 1,
        padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
        lam: float = 0.5, K: int = 3, irls_eps: float = IRLS_EPS, learn_lam: bool = False,
        lam_parametrization: str = "clamp", drop_bias: bool = False, backend: str = "auto",
        device: Any = None, dtype: Any = None, *, eps: float | None = None,
    ) -> None:
        super().__init__()
        irls_eps = renamed_argument("NRPMConv2d", "eps", "irls_eps", eps, irls_eps, IRLS_EPS)
        self._init_new(lambda: nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                         bias, padding_mode, device=device, dtype=dtype),
                       lam, K, irls_eps, learn_lam, lam_parametrization, drop_bias, backend)

    def _adopt(self, m: nn.Conv2d) -> None:
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode"):
            setattr(self, name, getattr(m, name))
        self._reversed_padding_repeated_twice = list(m._reversed_padding_repeated_twice)
        self.weight = m.weight
        self.bias = m.bias

    _plain_type = nn.Conv2d
    _hint = "use NRPMLinear.from_module for linear layers"

    def _new_plain(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode,
                         device=self.weight.device, dtype=self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.drop_bias else self.bias
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            if isinstance(padding, str) and padding == "valid":
                pass
            else:
                x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        return nrpm_conv2d(x, self.weight, bias, self._lam_arg(), self.K, self.irls_eps, self.stride, padding,
                           self.dilation, self.groups, self.backend, straight_through=bool(self.straight_through))

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding != (0,) * len(self.kernel_size):
            s += f", padding={self.padding}"
        if self.dilation != (1,) * len(self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + ", " + self._nrpm_repr()
