"""Where defences go in an arbitrary classifier, read off its module structure (never its name).

Zoo models say where NRPM layers and forged thresholds go through two hooks (``nrpm_default_layers()``,
``forge_insertion_points()``; docs/architecture.md, "Model structure hooks"). Any other ``nn.Module`` -- a
torchvision or timm classifier, a user's own network -- is analysed here:

* **Residual blocks.** Every non-root module is traced on its own with :mod:`torch.fx`, its direct children kept
  as opaque calls. The module is a residual block when its forward *adds* two tensors that both depend on its input
  and at least one of them reaches the input through a child holding a ``nn.Linear``/``nn.Conv2d``: ``out +=
  identity`` in torchvision's ``BasicBlock``/``Bottleneck``, ``x + self.block(x)`` in ``InvertedResidual``, timm's
  ``x = self.drop_path(x) + self.shortcut(shortcut)``, a transformer's ``x = x + attn(norm1(x))``. Of the two
  operands, the branch with more weighted child calls of its own is the *main path*; the other is the *shortcut*
  (the identity, or a strided 1×1 conv + norm). Layers reached only through the shortcut are reported apart.
* **Attention.** A module whose traced forward calls ``scaled_dot_product_attention`` or a softmax (timm's
  ``Attention``: ``qkv``/``proj``) is an attention module; its Linear children are the pattern-matching layers
  of the attention variant of the reprogramming paper ("the attention mechanism in Transformers performs linear
  transformations over the contextualized token vectors", Hou et al., ICLR 2025, Sec. 1).
  ``nn.MultiheadAttention`` reads its ``in_proj_weight``/``out_proj.weight`` directly, so nothing inside it can be
  swapped: its internals are skipped (torchvision's ViT keeps its MLP Linears only).

Defaults derived from it (used by :func:`torchrobust.reprogramming.select_layers` and
:func:`torchrobust.forging.insertion_points` when the model has no hook):

* :func:`default_nrpm_layers`: the main-path Linear/Conv2d layers of every residual block plus the Linear layers of
  every attention module -- conv blocks' convs, transformers' attention ``qkv``/``proj`` and MLP ``fc1``/``fc2`` --
  not the stem, the patch embedding, shortcut convs or the classifier head (they are outside every block). A model
  without residual blocks or attention gets every replaceable layer (the behaviour for plain MLPs / CNNs).
* :func:`default_insertion_points`: every replaceable layer inside a residual block or attention module, shortcut
  convs included (data-driven Lipschitz paper, Chen et al. 2024, Fig. 2: "before the convolutional layers in each
  residual block"); without blocks, every replaceable layer except the first (it sees the raw input).

A *replaceable* layer (NRPM) is an ``nn.Linear``/``nn.Conv2d`` whose class keeps the stock ``forward`` (a subclass
such as timm's ``Conv2dSame`` pads differently, and an NRPM layer would silently compute something else) and that does
not sit inside ``nn.MultiheadAttention``; a forged threshold keeps the layer itself, so any subclass can receive one.
A module whose forward cannot be traced (data-dependent control flow) is simply not counted as a block; its children
are still analysed. The analysis is cached per model object until its module tree changes.
"""

from __future__ import annotations

import logging
import operator
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "ResidualBlock",
    "residual_blocks",
    "attention_modules",
    "replaceable_layers",
    "wrappable_layers",
    "structural_nrpm_layers",
    "structural_insertion_points",
    "default_nrpm_layers",
    "default_insertion_points",
]

log = logging.getLogger(__name__)

_WEIGHTED = (nn.Linear, nn.Conv2d)
_ADD_FUNCTIONS: tuple[Callable[..., object], ...] = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_ATTENTION_FUNCTIONS: tuple[Callable[..., object], ...] = (F.scaled_dot_product_attention, F.softmax, torch.softmax)
_ATTENTION_METHODS = ("softmax",)
_CHAIN_FORWARDS = (nn.Sequential.forward, nn.ModuleList.forward, nn.ModuleDict.forward)


@dataclass(frozen=True)
class ResidualBlock:
    """A module whose forward adds a shortcut to its main path.

    ``main``: replaceable layers on the main path (every replaceable layer of the block not reached only through the
    shortcut); ``shortcut``: replaceable layers reached only through the shortcut (e.g. a 1×1 downsample conv).
    """

    name: str
    main: tuple[str, ...]
    shortcut: tuple[str, ...]


class _ShallowTracer(fx.Tracer):
    """Traces one module's own forward: every submodule call stays one opaque ``call_module`` node."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__(autowrap_modules=())  # no per-trace patching of `math` (dominates the cost otherwise)
        self._root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root


def _is_stock(m: nn.Module) -> bool:
    return (isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward) or (
        isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward
    )


def _layers(model: nn.Module, stock_only: bool) -> list[str]:
    inside_mha: set[int] = set()
    for _, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            inside_mha.update(id(s) for s in m.modules())
    out = []
    for name, m in model.named_modules():
        if not name or not isinstance(m, _WEIGHTED):
            continue
        if id(m) in inside_mha:
            log.debug("structure: skipping %s (nn.MultiheadAttention reads its weights directly)", name)
        elif stock_only and not _is_stock(m):
            log.info("structure: skipping %s (%s overrides forward)", name, type(m).__name__)
        else:
            out.append(name)
    return out


def replaceable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the stock ``nn.Linear``/``nn.Conv2d`` layers outside ``nn.MultiheadAttention`` (the
    layers an NRPM layer can stand in for)."""
    return _layers(model, stock_only=True)


def wrappable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear``/``nn.Conv2d`` layers (subclasses included) outside
    ``nn.MultiheadAttention``: a forged threshold in front of them keeps the layer itself, so its class may be
    any subclass."""
    return _layers(model, stock_only=False)


def _trace(module: nn.Module) -> fx.Graph | None:
    """The shallow fx graph of ``module``'s forward, or None when its forward cannot be traced symbolically."""
    tracer = _ShallowTracer(module)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tracer.trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure only means "not analysable"
        log.debug("structure: cannot trace %s (%s)", type(module).__name__, exc)
        return None


def _ancestors(node: fx.Node, memo: dict[fx.Node, frozenset[fx.Node]]) -> frozenset[fx.Node]:
    """``node`` and every node it depends on (iteratively: graphs can be deep)."""
    stack = [node]
    while stack:
        cur = stack[-1]
        if cur in memo:
            stack.pop()
            continue
        pending = [n for n in cur.all_input_nodes if n not in memo]
        if pending:
            stack.extend(pending)
            continue
        acc: set[fx.Node] = {cur}
        for n in cur.all_input_nodes:
            acc |= memo[n]
        memo[cur] = frozenset(acc)
        stack.pop()
    return memo[node]


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return True
    return node.op == "call_method" and node.target in _ADD_METHODS


def _is_attention(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ATTENTION_FUNCTIONS:
        return True
    return node.op == "call_method" and node.target in _ATTENTION_METHODS


def _weighted_children(module: nn.Module, nodes: frozenset[fx.Node]) -> set[str]:
    """Names of the direct children called in ``nodes`` that hold a Linear/Conv2d."""
    out = set()
    for n in nodes:
        if n.op == "call_module":
            child = module.get_submodule(str(n.target))
            if any(isinstance(s, _WEIGHTED) for s in child.modules()):
                out.add(str(n.target))
    return out


def _analyse(module: nn.Module) -> tuple[set[str] | None, bool]:
    """(children reached only through a shortcut, or None when not a residual block; whether it is attention)."""
    graph = _trace(module)
    if graph is None:
        return None, False
    memo: dict[fx.Node, frozenset[fx.Node]] = {}
    shortcut_children: set[str] = set()
    main_children: set[str] = set()
    residual = attention = False
    for node in graph.nodes:
        attention = attention or _is_attention(node)
        if not _is_add(node):
            continue
        args = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        if len(args) != 2:
            continue
        anc_a, anc_b = _ancestors(args[0], memo), _ancestors(args[1], memo)
        if not any(n.op == "placeholder" for n in anc_a & anc_b):
            continue  # e.g. x + pos_embed: only one operand depends on the input
        only_a = _weighted_children(module, anc_a - anc_b)
        only_b = _weighted_children(module, anc_b - anc_a)
        if not only_a and not only_b:
            continue
        main, short = (only_a, only_b) if len(only_a) >= len(only_b) else (only_b, only_a)
        residual = True
        main_children |= main
        shortcut_children |= short
    return (shortcut_children - main_children if residual else None), attention


def _layers_under(prefix: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(prefix + ".")]


_Scan = tuple[list[ResidualBlock], list[str], list[str]]
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[str, int], ...], _Scan]] = weakref.WeakKeyDictionary()


def _scan(model: nn.Module) -> _Scan:
    """(residual blocks, attention modules, wrappable layers), cached per model until its module tree changes."""
    key = tuple((name, id(m)) for name, m in model.named_modules())
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    layers = wrappable_layers(model)
    blocks: list[ResidualBlock] = []
    attention: list[str] = []
    for name, module in model.named_modules():
        if not name:
            continue  # the model itself is never a block: its stem and head would count as "inside"
        if isinstance(module, nn.MultiheadAttention):
            attention.append(name)
            continue
        if isinstance(module, _WEIGHTED) or not any(isinstance(s, _WEIGHTED) for s in module.modules()):
            continue
        if type(module).forward in _CHAIN_FORWARDS:
            continue  # nn.Sequential's own forward only chains its children: nothing is added
        shortcut_children, is_attention = _analyse(module)
        if is_attention:
            attention.append(name)
        if shortcut_children is not None:
            inside = _layers_under(name, layers)
            short = [n for n in inside if any(n == f"{name}.{c}" or n.startswith(f"{name}.{c}.")
                                              for c in shortcut_children)]
            blocks.append(ResidualBlock(name, tuple(n for n in inside if n not in short), tuple(short)))
    try:
        _CACHE[model] = (key, (blocks, attention, layers))
    except TypeError:  # pragma: no cover - a module class that cannot be weakly referenced
        pass
    return blocks, attention, layers


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The residual blocks of ``model`` in ``named_modules()`` order (nested blocks are listed too)."""
    return _scan(model)[0]


def attention_modules(model: nn.Module) -> list[str]:
    """Qualified names of the attention modules (softmax / scaled-dot-product attention, ``nn.MultiheadAttention``)."""
    return _scan(model)[1]


def structural_nrpm_layers(model: nn.Module) -> list[str]:
    """Main-path layers of the residual blocks plus the Linear layers of attention modules, stock classes only
    (may be empty)."""
    blocks, attention, layers = _scan(model)
    modules = dict(model.named_modules())
    chosen = {n for b in blocks for n in b.main}
    chosen |= {n for a in attention for n in _layers_under(a, layers) if isinstance(modules[n], nn.Linear)}
    # a main-path layer of an outer block that is the shortcut conv of a nested block stays a shortcut
    chosen -= {n for b in blocks for n in b.shortcut}
    return [n for n in layers if n in chosen and _is_stock(modules[n])]


def structural_insertion_points(model: nn.Module) -> list[str]:
    """Every Linear/Conv2d inside a residual block or attention module, shortcuts included (may be empty)."""
    blocks, attention, layers = _scan(model)
    chosen = {n for b in blocks for n in (*b.main, *b.shortcut)}
    chosen |= {n for a in attention for n in _layers_under(a, layers)}
    return [n for n in layers if n in chosen]


def _hooked(model: nn.Module, hook: str) -> list[str] | None:
    fn = getattr(model, hook, None)
    return list(fn()) if callable(fn) else None


def default_nrpm_layers(model: nn.Module) -> list[str]:
    """The layers :func:`torchrobust.reprogramming.reprogram` replaces by default: ``model.nrpm_default_layers()`` when
    defined, else :func:`structural_nrpm_layers`, else every replaceable layer (empty when there is none)."""
    hooked = _hooked(model, "nrpm_default_layers")
    if hooked is not None:
        return hooked
    return structural_nrpm_layers(model) or replaceable_layers(model)


def default_insertion_points(model: nn.Module) -> list[str]:
    """The layers :func:`torchrobust.forging.forge` puts a forged threshold before by default:
    ``model.forge_insertion_points()`` when defined, else :func:`structural_insertion_points`, else every wrappable
    layer but the first, which sees the raw input (empty when that leaves nothing)."""
    hooked = _hooked(model, "forge_insertion_points")
    if hooked is not None:
        return hooked
    return structural_insertion_points(model) or wrappable_layers(model)[1:]
