"""Robustness reprogramming: swap a model's linear pattern matching for NRPM, reversibly.

Implements the model surgery of Hou et al., *Robustness Reprogramming for Representation Learning* (ICLR 2025):
every selected ``nn.Linear`` / ``nn.Conv2d`` (the paper's *linear pattern matching*, LPM) is replaced by its
*nonlinear robust pattern matching* (NRPM) counterpart from :mod:`torchrobust.nn`, which computes the hybrid
output of the paper's Algorithm 1 (``λ·z_LPM + (1-λ)·z_NRPM^(K)``, K Newton-IRLS steps of Eq. (3); ε-smoothed
weights as in Appendix Algorithm 2) with the **original weights**. λ = 1 gives back the original model.

The three paradigms of Sec. 4 (Figure 2) are helpers on top of the surgery:

* Paradigm 1 - fixed λ, nothing trained: :func:`reprogram` with a λ, or :func:`lam_sweep` over a grid;
* Paradigm 2 - only the per-layer λ are trained (weights frozen): ``set_paradigm(model, 2)`` returns the
  parameters to optimise;
* Paradigm 3 - weights and λ are trained: ``set_paradigm(model, 3)``.

Note on the public code's numbering: its ``--paradigm 1`` *trains* λ only (the paper's Paradigm 2) and its
``--paradigm 2`` trains everything (the paper's Paradigm 3). torchrobust uses the paper's numbering.

Copies share weights
--------------------
``reprogram(model)`` (``inplace=False``, the default) does **not** deep-copy the weights. It makes a
*structural* copy: every module object of the tree is shallow-copied (new module objects, new
``_modules``/``_parameters``/``_buffers``/hook dicts), so the copy can be re-wired, switched between train/eval
and reprogrammed without touching the original, while all ``nn.Parameter`` and buffer tensors are the very same
objects as in the original. The NRPM layers wrap the *original* layer objects, so
``unreprogram(copy)`` puts the original ``nn.Linear``/``nn.Conv2d`` objects back and its ``state_dict`` is
bit-for-bit the original's. Consequences of the sharing (documented, intended): an optimiser step on the copy's
weights (Paradigm 3), a ``.to(device)`` / ``.half()``, or BatchNorm running-statistics updates in ``train()``
mode are visible in the original too. Use ``copy.deepcopy(model)`` first if you want independent weights.

Example::

    >>> import torch.nn as nn
    >>> from torchrobust.reprogramming import reprogram, unreprogram
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> robust = reprogram(net, lam=0.7, K=3)            # net itself is untouched
    >>> robust[1].weight is net[1].weight
    True
    >>> back = unreprogram(robust)
    >>> back[1] is net[1]
    True
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any, Union

import torch
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_irls_eps, check_irls_steps, check_lam, renamed_argument

__all__ = [
    "reprogram",
    "unreprogram",
    "is_reprogrammed",
    "nrpm_layers",
    "select_layers",
    "set_lam",
    "set_K",
    "learned_lams",
    "lam_sweep",
    "trainable_params",
    "set_paradigm",
    "Paradigm",
    "PARADIGMS",
]

logger = logging.getLogger(__name__)

LayerSpec = Union[None, str, "re.Pattern[str]", Sequence[str], type, tuple]  # noqa: UP007
LamSpec = Union[float, Mapping[str, float], Sequence[float]]  # noqa: UP007



class Paradigm(IntEnum):
    """The three reprogramming paradigms of the paper's Sec. 4 (Figure 2), numbered as in the paper; plain ints
    1, 2, 3 are accepted wherever a paradigm is."""

    FIXED_LAM = 1  #: fixed λ, nothing trained (plug-and-play)
    LEARN_LAM = 2  #: train λ only, weights frozen
    LEARN_ALL = 3  #: train weights and λ


#: Paradigm -> short description (the paper's Sec. 4 numbering).
PARADIGMS: dict[int, str] = {
    Paradigm.FIXED_LAM: "fixed λ, no training (plug-and-play)",
    Paradigm.LEARN_LAM: "train λ only, weights frozen",
    Paradigm.LEARN_ALL: "train weights and λ",
}

#: Default IRLS damping ε of :func:`reprogram` (the paper's Appendix Algorithm 2).
IRLS_EPS = 1e-3

_REPLACEABLE = (nn.Linear, nn.Conv2d)
_REGEX_HINTS = ("\\", "^", "$", "+", "(", ")", "{", "}", "|", ".*", ".+")


def _nrpm_classes() -> tuple[type, type]:
    from torchrobust.nn import NRPMConv2d, NRPMLinear

    return NRPMLinear, NRPMConv2d


def _is_nrpm(module: nn.Module) -> bool:
    return isinstance(module, _nrpm_classes())


def _is_replaceable(module: nn.Module) -> bool:
    return isinstance(module, _REPLACEABLE) and not _is_nrpm(module)


def nrpm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The NRPM layers of ``model`` by qualified name, in ``named_modules()`` order."""
    return {name: m for name, m in model.named_modules() if _is_nrpm(m)}


def is_reprogrammed(model: nn.Module) -> bool:
    """Whether ``model`` contains at least one NRPM layer."""
    return any(_is_nrpm(m) for m in model.modules())


# ----------------------------------------------------------------------------------------------- selection
def _few(names: Iterable[str], n: int = 6) -> str:
    names = list(names)
    head = ", ".join(names[:n])
    return head + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _default_layers(model: nn.Module) -> list[str]:
    # the model's hook, else its residual blocks' main paths and attention/MLP Linears (models.structure)
    from torchrobust.models.structure import default_nrpm_layers

    return default_nrpm_layers(model)


def select_layers(model: nn.Module, layers: LayerSpec = None) -> list[str]:
    """Resolve a layer selection to qualified names of replaceable ``nn.Linear``/``nn.Conv2d`` layers.

    ``layers`` may be:

    * ``None`` - ``model.nrpm_default_layers()`` when the model defines it (zoo models), otherwise the layers
      :mod:`torchrobust.models.structure` derives from the module structure: the main-path Linear/Conv2d layers of
      every residual block and the Linear layers of attention modules (not the stem, shortcut convs or the head);
      a model without either gets every ``nn.Linear`` and ``nn.Conv2d`` (except ``nn.MultiheadAttention``'s);
    * a list/tuple of qualified names (as in ``named_modules()``), each of which must be a Linear/Conv2d;
    * a string: an exact module name selects that layer; otherwise the string is a pattern matched against
      the full qualified name - a *regular expression* (``re.fullmatch``) when it contains regex syntax
      (``\\ ^ $ + ( ) { } |`` or ``.*``/``.+``), a *glob* (``fnmatch``: ``*``, ``?``, ``[..]``) otherwise -
      and selects the matching Linear/Conv2d layers; a compiled ``re.Pattern`` is always a regex;
    * a type or tuple of types (subclasses of ``nn.Linear``/``nn.Conv2d``): every layer of that type.

    The result is in ``named_modules()`` order. Raises :class:`TorchRobustError` for unknown names, selections
    that match nothing, and models without replaceable layers.
    """
    all_names = [name for name, m in model.named_modules() if _is_replaceable(m)]
    if layers is None:
        names = _default_layers(model)
        if not names:
            if any(_is_nrpm(m) for m in model.modules()):
                raise TorchRobustError(
                    "model is already reprogrammed (it contains NRPM layers); call unreprogram(model) first"
                )
            raise TorchRobustError(
                f"model {type(model).__name__} has no nn.Linear or nn.Conv2d layer to reprogram; "
                "pass a model that contains one"
            )
    elif isinstance(layers, re.Pattern):
        names = [n for n in all_names if layers.fullmatch(n)]
        if not names:
            raise TorchRobustError(
                f"layer pattern {layers.pattern!r} matches no Linear/Conv2d layer; valid names: {_few(all_names)}"
            )
    elif isinstance(layers, str):
        modules = dict(model.named_modules())
        if layers in modules and layers != "":
            names = [layers]
        else:
            if any(h in layers for h in _REGEX_HINTS):
                try:
                    rx = re.compile(layers)
                except re.error as exc:
                    raise TorchRobustError(
                        f"layer pattern {layers!r} is not a valid regular expression ({exc}); fix the pattern"
                    ) from None
                names = [n for n in all_names if rx.fullmatch(n)]
            else:
                names = [n for n in all_names if fnmatch.fnmatchcase(n, layers)]
            if not names:
                raise TorchRobustError(
                    f"layer pattern {layers!r} matches no Linear/Conv2d layer; valid names: {_few(all_names)}"
                )
    elif isinstance(layers, type) or (
        isinstance(layers, tuple) and layers and all(isinstance(t, type) for t in layers)
    ):
        types = layers if isinstance(layers, tuple) else (layers,)
        bad = [t.__name__ for t in types if not issubclass(t, _REPLACEABLE)]
        if bad:
            raise TorchRobustError(
                f"layer type(s) {', '.join(bad)} cannot be reprogrammed; use nn.Linear and/or nn.Conv2d"
            )
        names = [n for n, m in model.named_modules() if isinstance(m, types) and _is_replaceable(m)]
        if not names:
            raise TorchRobustError(
                f"model has no layer of type {', '.join(t.__name__ for t in types)}; valid names: "
                f"{_few(all_names)}"
            )
    elif isinstance(layers, Sequence):
        names = [str(n) for n in layers]
        if not names:
            raise TorchRobustError("layers is an empty list; pass None for the default layers or some names")
        modules = dict(model.named_modules())
        for n in names:
            if n not in modules or n == "":
                raise TorchRobustError(f"no layer named {n!r} in the model; valid names: {_few(all_names)}")
        if len(set(names)) != len(names):
            raise TorchRobustError("layers lists a name twice; list each layer once")
        order = {n: i for i, n in enumerate(modules)}
        names.sort(key=order.__getitem__)
    else:
        raise TorchRobustError(
            f"layers must be None, a list of names, a pattern string or a layer type, not {type(layers).__name__}"
        )
    modules = dict(model.named_modules())
    for n in names:
        m = modules.get(n)
        if m is None:
            raise TorchRobustError(f"no layer named {n!r} in the model; valid names: {_few(all_names)}")
        if _is_nrpm(m):
            raise TorchRobustError(f"layer {n!r} is already reprogrammed; call unreprogram(model) first")
        if not _is_replaceable(m):
            raise TorchRobustError(
                f"layer {n!r} is a {type(m).__name__}, not nn.Linear/nn.Conv2d; valid names: {_few(all_names)}"
            )
    return names


# ----------------------------------------------------------------------------------------------- validation
def _resolve_lams(lam: LamSpec, names: list[str], bounded: bool = True) -> dict[str, float]:
    """One λ per selected layer, each checked (in [0, 1]; any finite number when not ``bounded``: raw λ)."""
    if isinstance(lam, Mapping):
        unknown = [k for k in lam if k not in names]
        if unknown:
            raise TorchRobustError(
                f"lam gives λ for layer(s) not selected: {_few(unknown)}; selected: {_few(names)}"
            )
        missing = [n for n in names if n not in lam]
        if missing:
            raise TorchRobustError(f"lam gives no λ for selected layer(s) {_few(missing)}; add them to the dict")
        return {n: check_lam(lam[n], f"lam[{n!r}]", bounded=bounded) for n in names}
    if isinstance(lam, torch.Tensor) and lam.dim() == 0:
        lam = float(lam)
    if isinstance(lam, (Sequence, torch.Tensor)) and not isinstance(lam, str):
        values = list(lam.tolist() if isinstance(lam, torch.Tensor) else lam)
        if len(values) != len(names):
            raise TorchRobustError(
                f"lam has {len(values)} values but {len(names)} layers are selected ({_few(names)}); "
                "give one λ per selected layer"
            )
        return {n: check_lam(v, f"lam[{i}]", bounded=bounded)
                for i, (n, v) in enumerate(zip(names, values, strict=True))}
    v = check_lam(lam, bounded=bounded)
    return {n: v for n in names}


# ----------------------------------------------------------------------------------------------- surgery
def _structural_copy(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """Shallow-copy every module of the tree; parameters and buffers stay the same tensor objects."""
    if id(module) in memo:
        return memo[id(module)]
    new = copy.copy(module)  # nn.Module.__setstate__ gives the copy its own __dict__
    for key, val in list(vars(new).items()):
        if key == "torchrobust_spec":
            new.__dict__[key] = copy.deepcopy(val)
        elif isinstance(val, (dict, list, set)):
            new.__dict__[key] = copy.copy(val)
    memo[id(module)] = new
    for name, child in module._modules.items():
        new._modules[name] = None if child is None else _structural_copy(child, memo)
    return new


def _parents_of(root: nn.Module, target: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute name) under which ``target`` is registered, duplicates included."""
    out = []
    for _, parent in root.named_modules(remove_duplicate=False):
        for cname, child in parent._modules.items():
            if child is target:
                out.append((parent, cname))
    return out


def _from_module_kwargs(cls: type, backend: str) -> dict[str, Any]:
    try:
        params = inspect.signature(cls.from_module).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins only
        params = {}
    if "backend" in params:
        return {"backend": backend}
    if backend != "auto":
        raise TorchRobustError(
            f"backend={backend!r} is not supported by {cls.__name__}; use backend='auto'"
        )
    return {}


def reprogram(
    model: nn.Module,
    lam: LamSpec = 0.5,
    K: int = 3,
    irls_eps: float = IRLS_EPS,
    layers: LayerSpec = None,
    inplace: bool = False,
    learn_lam: bool = False,
    drop_bias: bool = False,
    backend: str = "auto",
    *,
    lam_parametrization: str = "clamp",
    eps: float | None = None,
) -> nn.Module:
    """Replace the selected Linear/Conv2d layers of ``model`` by NRPM layers (paper Sec. 4, Algorithm 1).

    Args:
        model: any ``nn.Module``.
        lam: λ, the weight of the LPM term in ``λ·z_LPM + (1-λ)·z_NRPM`` (Algorithm 1), in [0, 1]: a scalar
            for every layer, a dict ``{qualified name: λ}`` (with ``layers=None`` its keys *are* the
            selection), or a sequence aligned with the selected layers (in ``named_modules()`` order).
            λ = 1 is the original model, λ = 0 pure NRPM.
        K: number of Newton-IRLS steps (Eq. (3)), an integer >= 0. Algorithm 2 of the paper uses 3; the
            paper's MNIST Table 1 Paradigm-1 rows were produced with K = 1 (they equal Table 8's K = 1 rows).
        irls_eps: the damping ε > 0 in the IRLS weight ``1/(|a_d x_d - z/D| + ε)`` (Appendix Algorithm 2;
            Algorithm 1 has none). Not an attack radius: ``eps`` is its deprecated old name here (accepted with a
            ``DeprecationWarning`` for one release).
        layers: which layers; see :func:`select_layers` (None = the model's documented defaults).
        inplace: modify ``model`` itself instead of a weight-sharing structural copy (see module docs).
        learn_lam: make λ trainable (``requires_grad``) from the start; :func:`set_paradigm` also sets it.
        drop_bias: ignore the layer bias, as the public code's ``RobustConv2d`` does (faithful-replication
            option; the default keeps the bias, which is what the original layer computes).
        backend: NRPM kernel choice passed to the layers (``"auto"`` lets them pick).
        lam_parametrization: how the layers store λ (:class:`torchrobust.nn.LamParametrization`): ``"clamp"``
            (default; λ projected into [0, 1] after each optimiser step), ``"sigmoid"``, or ``"raw"`` - λ used as-is
            and never projected, so it can leave [0, 1] (the paper code's ``--paradigm 1``; then ``lam`` may be any
            finite number). Not recommended; a faithful-replication option.

    Returns:
        The reprogrammed model (``model`` itself when ``inplace``). If the model has a ``torchrobust_spec``
        dict, ``{"name": "reprogram", "kwargs": {...}}`` is appended to its ``"transforms"`` list; the
        kwargs are the resolved arguments (layer names, per-layer λ when not uniform) so that
        ``reprogram(rebuilt, **kwargs)`` replays the surgery.

    Raises:
        TorchRobustError: λ outside [0, 1] (not finite, for "raw"), an unknown lam_parametrization, K < 0,
            irls_eps <= 0, nothing to replace, unknown layer names, or an already reprogrammed model / layer.
    """
    irls_eps = renamed_argument("reprogram", "eps", "irls_eps", eps, irls_eps, IRLS_EPS)
    K = check_irls_steps(K)
    irls_eps = check_irls_eps(irls_eps)
    from torchrobust.nn.nrpm_layers import check_lam_parametrization

    lam_parametrization = check_lam_parametrization(lam_parametrization)
    if not isinstance(model, nn.Module):
        raise TorchRobustError(f"reprogram expects an nn.Module, got {type(model).__name__}")
    if is_reprogrammed(model):
        raise TorchRobustError(
            "model is already reprogrammed (it contains NRPM layers); call unreprogram(model) first"
        )
    if layers is None and isinstance(lam, Mapping):
        layers = list(lam)
    names = select_layers(model, layers)
    lams = _resolve_lams(lam, names, bounded=lam_parametrization != "raw")
    NRPMLinear, NRPMConv2d = _nrpm_classes()

    target = model if inplace else _structural_copy(model, {})
    originals = dict(model.named_modules())
    wrapped: dict[int, nn.Module] = {}
    for name in names:
        layer = originals[name]  # the ORIGINAL layer object: the NRPM layer shares its Parameters
        if id(layer) in wrapped:
            continue
        cls = NRPMLinear if isinstance(layer, nn.Linear) else NRPMConv2d
        new = cls.from_module(
            layer, lam=lams[name], K=K, irls_eps=irls_eps, learn_lam=learn_lam, drop_bias=drop_bias,
            lam_parametrization=lam_parametrization, **_from_module_kwargs(cls, backend),
        )
        wrapped[id(layer)] = new
        # the structural copy holds a shallow copy of `layer` under the same names; replace all occurrences
        copy_layer = target.get_submodule(name)
        for parent, cname in _parents_of(target, copy_layer):
            parent._modules[cname] = new
        logger.debug("reprogram: %s -> %s(λ=%.3g, K=%d, irls_eps=%g)", name, cls.__name__, lams[name], K, irls_eps)
    logger.info("reprogram: %d layer(s) replaced by NRPM (K=%d, irls_eps=%g)", len(wrapped), K, irls_eps)

    spec = getattr(target, "torchrobust_spec", None)
    if isinstance(spec, dict):
        uniform = len(set(lams.values())) == 1
        kwargs: dict[str, Any] = {
            "lam": next(iter(lams.values())) if uniform else dict(lams),
            "K": K,
            "irls_eps": irls_eps,
            "layers": list(names),
            "learn_lam": bool(learn_lam),
            "drop_bias": bool(drop_bias),
            "backend": backend,
        }
        if lam_parametrization != "clamp":  # the default is left out: older checkpoints replay unchanged
            kwargs["lam_parametrization"] = lam_parametrization
        spec.setdefault("transforms", []).append({"name": "reprogram", "kwargs": kwargs})
    return target


def unreprogram(model: nn.Module) -> nn.Module:
    """Undo :func:`reprogram` in place and return ``model``.

    Every NRPM layer is replaced by ``layer.to_module()`` - the exact original ``nn.Linear``/``nn.Conv2d``
    object - so the restored model's ``state_dict`` equals the pre-reprogramming one bit for bit (λ values,
    learned or not, are discarded). For a model produced by ``reprogram(..., inplace=True)`` this gives back the
    original object exactly. The last ``"reprogram"`` entry of ``model.torchrobust_spec["transforms"]`` is
    removed. Also available as ``reprogram.inverse``.

    Raises:
        TorchRobustError: the model contains no NRPM layer.
    """
    found = False
    restored: dict[int, nn.Module] = {}
    for _, parent in list(model.named_modules(remove_duplicate=False)):
        for cname, child in list(parent._modules.items()):
            if child is not None and _is_nrpm(child):
                if id(child) not in restored:
                    restored[id(child)] = child.to_module()
                parent._modules[cname] = restored[id(child)]
                found = True
    if not found:
        raise TorchRobustError("model is not reprogrammed (no NRPM layer found); nothing to undo")
    spec = getattr(model, "torchrobust_spec", None)
    if isinstance(spec, dict):
        transforms = spec.get("transforms", [])
        for i in range(len(transforms) - 1, -1, -1):
            if isinstance(transforms[i], dict) and transforms[i].get("name") == "reprogram":
                del transforms[i]
                break
        if not transforms and "transforms" in spec:
            del spec["transforms"]
    return model


reprogram.inverse = unreprogram  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------- λ and K
def _require_nrpm(model: nn.Module) -> dict[str, nn.Module]:
    layers = nrpm_layers(model)
    if not layers:
        raise TorchRobustError("model is not reprogrammed (no NRPM layer); call reprogram(model) first")
    return layers


def _write_lam(layer: nn.Module, value: float) -> None:
    cur = layer.lam
    if isinstance(cur, torch.Tensor):
        with torch.no_grad():
            cur.fill_(value)
    else:
        layer.lam = float(value)


def set_lam(model: nn.Module, lam: LamSpec) -> None:
    """Set λ of the NRPM layers of a reprogrammed model: a scalar for all, a dict by name, or a sequence.
    λ must be in [0, 1] unless every NRPM layer stores it raw (``lam_parametrization="raw"``)."""
    layers = _require_nrpm(model)
    all_raw = all(getattr(m, "lam_parametrization", "clamp") == "raw" for m in layers.values())
    for name, v in _resolve_lams(lam, list(layers), bounded=not all_raw).items():
        _write_lam(layers[name], v)


def set_K(model: nn.Module, K: int) -> None:
    """Set the number of IRLS steps K of every NRPM layer (Table 8's ablation)."""
    K = check_irls_steps(K)
    for layer in _require_nrpm(model).values():
        layer.K = K


def learned_lams(model: nn.Module) -> dict[str, float]:
    """λ of every NRPM layer by qualified name (the paper's learned ``[λ1, λ2, λ3]`` in Tables 1 and 2): the value the
    layer uses (for ``lam_parametrization="raw"`` the raw λ, possibly outside [0, 1]; the paper code logs
    ``sigmoid`` of it)."""
    return {name: float(layer.lam) for name, layer in _require_nrpm(model).items()}


def lam_sweep(
    model: nn.Module,
    lams: Iterable[float],
    evaluate_fn: Callable[[nn.Module], Any],
    K: int | None = None,
) -> list[dict[str, Any]]:
    """Paradigm 1: evaluate a reprogrammed model at a shared fixed λ for each value of a grid.

    ``evaluate_fn(model)`` returns a number or a dict of numbers (e.g. accuracy per ε); each row of the result
    is ``{"lam": λ, "K": K, **metrics}`` (a number becomes ``{"value": x}``). The model's λ values (and K, if
    given) are restored afterwards, also on error.
    """
    layers = _require_nrpm(model)
    saved_lam = {n: float(m.lam) for n, m in layers.items()}
    saved_K = {n: int(m.K) for n, m in layers.items()}
    rows: list[dict[str, Any]] = []
    try:
        if K is not None:
            set_K(model, K)
        for v in lams:
            v = check_lam(v)
            set_lam(model, v)
            result = evaluate_fn(model)
            metrics = dict(result) if isinstance(result, Mapping) else {"value": result}
            rows.append({"lam": v, "K": int(next(iter(layers.values())).K), **metrics})
    finally:
        for n, m in layers.items():
            _write_lam(m, saved_lam[n])
            m.K = saved_K[n]
    return rows


# ----------------------------------------------------------------------------------------------- paradigms
def _lam_param(layer: nn.Module) -> nn.Parameter | None:
    p = getattr(layer, "lam_parameter", None)
    if isinstance(p, nn.Parameter):
        return p
    lam = getattr(layer, "lam", None)
    return lam if isinstance(lam, nn.Parameter) else None


def _lam_params(model: nn.Module) -> list[nn.Parameter]:
    layers = _require_nrpm(model)
    out: list[nn.Parameter] = []
    for name, layer in layers.items():
        p = _lam_param(layer)
        if p is None:
            raise TorchRobustError(f"layer {name!r} has no λ Parameter to train; rebuild it with reprogram()")
        out.append(p)
    return out


def trainable_params(model: nn.Module, paradigm: int) -> list[nn.Parameter]:
    """The parameters a paradigm trains (paper Sec. 4, Figure 2), without changing ``requires_grad``.

    1: none (fixed λ); 2: the NRPM λ parameters only; 3: every parameter of the model (weights and λ).
    Every NRPM layer stores λ as a Parameter (``lam_parameter``); ``learn_lam`` only sets its initial
    ``requires_grad``, and :func:`set_paradigm` overrides it.
    """
    if paradigm not in PARADIGMS:
        raise TorchRobustError(f"unknown paradigm {paradigm!r}; valid: 1 (fixed λ), 2 (learn λ), 3 (learn all)")
    if paradigm == 1:
        _require_nrpm(model)
        return []
    lam = _lam_params(model)
    if paradigm == 2:
        return lam
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def set_paradigm(model: nn.Module, paradigm: int) -> list[nn.Parameter]:
    """Set ``requires_grad`` for a paradigm and return the trainable parameters (for the optimiser).

    Note: freezing weights does not freeze BatchNorm running statistics; keep BatchNorm layers in ``eval()``
    mode during Paradigm-2 fine-tuning if they must stay untouched (with a structural copy they are shared
    with the original model).
    """
    train = trainable_params(model, paradigm)
    ids = {id(p) for p in train}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return train
