"""Architecture rules that import-linter cannot express (its layer contracts run in .ci/run as `lint-imports`).

No torchrobust module uses another module's private (``_``-prefixed) names: neither ``from torchrobust.x import _y``
nor ``x._y`` on an imported torchrobust module. Function-level imports count as well.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchrobust"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_uses(source: str, module: str, is_package: bool = False) -> list[str]:
    """``"line: what"`` for every use of another torchrobust module's private name in ``source``."""
    tree = ast.parse(source)
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> torchrobust module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            if not target.startswith("torchrobust") or target == module:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.lineno}: from {target} import {alias.name}")
                else:
                    bound[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torchrobust") and alias.name != module:
                    bound[alias.asname or alias.name] = alias.name if alias.asname else alias.name.split(".")[0]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr} ({bound[node.value.id]})")
    return found


def test_the_checker_sees_private_imports_and_attribute_uses() -> None:
    src = ("from torchrobust.forging import _batches\n"
           "def f():\n    from .cli import _floats\n    from torchrobust import checkpoint\n"
           "    return checkpoint._umask()\n")
    assert len(private_uses(src, "torchrobust.evaluate.x")) == 3
    ok = "from ._helpers import x\nfrom . import _private_module_of_mine\nfrom torchrobust.io import write_texts\n"
    assert private_uses("def _own():\n    pass\n_own()\n", "torchrobust.x") == []
    assert private_uses(ok, "torchrobust.evaluate.x") == [
        "2: from torchrobust.evaluate import _private_module_of_mine"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    uses = private_uses(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    assert uses == [], f"{path.relative_to(PACKAGE.parent)} uses private names of other modules: {uses}"


# ------------------------------------------------------------------------------------------- one place per concept
REPO = PACKAGE.parent
#: What a reference to a file outside the repository looks like (the notes the code once cited; the facts now live
#: in docs/paper-code-facts.md). Built from pieces so that this file does not match itself.
_OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "/work/" + "shared", "shared/" + "notes", "notes " + "§",
                                r"(?<![\w-])notes/[\w-]+\.md"]))
_THREATS = {"Linf", "L2", "L1"}


def _text_files() -> list[Path]:
    roots = [REPO / "torchrobust", REPO / "docs", REPO / "tests", REPO / "benchmarks", REPO / ".ci"]
    files = [REPO / "README.md", REPO / "pyproject.toml"]
    for root in roots:
        files += [p for p in root.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".toml", ".txt", ".cfg",
                                                                           ".yml", ".yaml", ".sh", ""}]
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def test_nothing_references_files_outside_the_repository() -> None:
    bad = []
    for path in _text_files():
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if _OUTSIDE.search(line):
                bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()[:100]}")
    assert bad == [], "references to files outside the repository (move the facts into docs/):\n" + "\n".join(bad)


def threat_tuples(source: str) -> list[int]:
    """Lines of tuple/list/set literals that spell out the threat names Linf, L2, L1 (any case) instead of using
    ``torchrobust.attacks.threat.ThreatName`` / ``THREAT_NAMES``."""
    out = []
    tree = ast.parse(source)
    exported = {id(n.value) for n in ast.walk(tree)  # __all__ lists the classes of those names
                if (isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets))
                or (isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name) and n.target.id == "__all__")}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and id(node) not in exported:
            names = {e.value.lower() for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if {t.lower() for t in _THREATS} <= names:
                out.append(node.lineno)
    return out


def test_the_threat_tuple_checker() -> None:
    assert threat_tuples('a = ("Linf", "L2", "L1")\nb = ["clean", "linf", "l2", "l1"]\n') == [1, 2]
    assert threat_tuples('a = ("Linf", "L2")\nb = THREAT_NAMES\nc = {"Linf": 1, "L2": 2, "L1": 3}\n') == []
    assert threat_tuples('__all__ = ["Linf", "L2", "L1", "get_threat"]\n') == []  # the classes of those names


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_threat_names_come_from_the_enum(path: Path) -> None:
    if path == PACKAGE / "attacks" / "threat.py":  # the definition of ThreatName / THREAT_NAMES
        return
    lines = threat_tuples(path.read_text(encoding="utf-8"))
    assert lines == [], (f"{path.relative_to(REPO)} spells out the threat names at line(s) {lines}; use "
                         "torchrobust.attacks.threat.THREAT_NAMES (or ThreatName)")


_DEVICE_LOOKUP = re.compile(r"next\(\s*\(?\s*\w+\.device\s+for\s+\w+\s+in\s+")


def test_the_model_device_helper_is_the_only_device_lookup() -> None:
    assert _DEVICE_LOOKUP.search("dev = next((p.device for p in model.parameters()), x.device)")
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "validation.py":  # model_device itself
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _DEVICE_LOOKUP.search(line):
                bad.append(f"{path.relative_to(REPO)}:{i}")
    assert bad == [], f"use torchrobust.validation.model_device(model, default) instead of next(p.device ...): {bad}"


# ------------------------------------------------------------------------------------- one command line
SHARED_OPTIONS = {"--data", "--data-root", "--seed", "--device", "--out", "--overwrite", "--batch-size", "--threads",
                  "--quiet"}


def parser_constructions(sources: dict[str, str]) -> list[str]:
    """``"path:line"`` of every construction of an argparse parser (``ArgumentParser(...)`` or of a subclass of it
    defined in ``sources``); sub-parsers made by ``add_parser`` are not constructions."""
    trees = {name: ast.parse(src) for name, src in sources.items()}
    names = {"ArgumentParser"}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id in names) or (isinstance(b, ast.Attribute) and b.attr in names)
                    for b in node.bases):
                names.add(node.name)
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (
                    (isinstance(node.func, ast.Name) and node.func.id in names)
                    or (isinstance(node.func, ast.Attribute) and node.func.attr in names)):
                found.append(f"{name}:{node.lineno}")
    return found


def option_declarations(sources: dict[str, str], options: set[str]) -> dict[str, list[str]]:
    """option -> ``"path:line"`` of every ``add_argument("<option>", ...)`` in ``sources``."""
    found: dict[str, list[str]] = {}
    for name, src in sources.items():
        for node in ast.walk(ast.parse(src)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument" and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in options):
                found.setdefault(node.args[0].value, []).append(f"{name}:{node.lineno}")
    return found


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE.parent)): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_parser_checkers_see_constructions_and_declarations() -> None:
    src = {"a.py": "import argparse\nclass P(argparse.ArgumentParser):\n    pass\nclass Q(P):\n    pass\n"
                   "p = Q(prog='x')\nsub = p.add_subparsers()\nsub.add_parser('y')\n",
           "b.py": "from argparse import ArgumentParser\nap = ArgumentParser()\nap.add_argument('--seed')\n"
                   "ap.add_argument('--lr')\n"}
    assert parser_constructions(src) == ["a.py:6", "b.py:2"]
    assert option_declarations(src, {"--seed", "--out"}) == {"--seed": ["b.py:3"]}


def test_exactly_one_argparse_parser_in_torchrobust() -> None:
    found = parser_constructions(_sources())
    assert len(found) == 1 and found[0].startswith("torchrobust/cli/"), found


def test_shared_cli_options_are_declared_in_one_module() -> None:
    found = option_declarations(_sources(), SHARED_OPTIONS)
    assert set(found) == SHARED_OPTIONS, f"not declared at all: {SHARED_OPTIONS - set(found)}"
    for option, where in found.items():
        assert len(where) == 1 and where[0].startswith("torchrobust/cli/options.py:"), (option, where)


# ------------------------------------------------------------------------------------- one library call per command
#: Calls a command handler may make besides its one library call: looking up attack classes / threat models while
#: it validates its options. Loading a checkpoint or data is the library call's job (``load``/``load_*`` below).
CLI_INPUT_CALLS = {"torchrobust.attacks.attack_class", "torchrobust.attacks.get_threat"}
#: Calls that write or seed: the library call does them, never a handler.
CLI_FORBIDDEN_CALLS = {"open", "write_text", "write_bytes", "write_texts", "save", "atomic_write_bytes", "savefig",
                       "mkdir", "manual_seed", "reprogram", "forge", "fit", "write_tables"}


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return dotted.startswith("torchrobust") and ((PACKAGE / rel).with_suffix(".py").is_file()
                                                  or (PACKAGE / rel / "__init__.py").is_file())


def _bindings(node: ast.AST, module: str) -> dict[str, str]:
    """Local name -> the dotted torchrobust module or function it is bound to by the imports directly in ``node``."""
    out: dict[str, str] = {}
    for stmt in ast.walk(node):
        if isinstance(stmt, ast.ImportFrom):
            target = _resolve(stmt, module, False)
            for alias in stmt.names:
                if target.startswith("torchrobust"):
                    out[alias.asname or alias.name] = f"{target}.{alias.name}"
    return out


def handler_calls(source: str, module: str) -> dict[str, tuple[list[int], list[str]]]:
    """Per command handler (a function passed as ``set_defaults(fn=...)``) of a CLI module: the numbers of library
    calls on each path through it (same-module helpers it calls are followed; input reads, ``check_*`` validators,
    classes and calls into ``torchrobust.cli`` do not count) and the forbidden calls (writes, seeding, the work
    itself) it or its helpers make."""
    tree = ast.parse(source)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = _bindings(ast.Module(body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[]),
                    module)

    def target(call: ast.Call, names: dict[str, str]) -> str | None:
        f = call.func
        if isinstance(f, ast.Name):
            return names.get(f.id)
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in names \
                and _is_module(names[f.value.id]):
            return f"{names[f.value.id]}.{f.attr}"
        return None

    def counts(fn: ast.FunctionDef, forbidden: list[str], stack: tuple[str, ...]) -> list[int]:
        names = {**top, **_bindings(fn, module)}

        def calls_in(node: ast.AST) -> int:
            n = 0
            for c in ast.walk(node):
                if not isinstance(c, ast.Call):
                    continue
                callee = c.func.id if isinstance(c.func, ast.Name) else getattr(c.func, "attr", "")
                if callee in CLI_FORBIDDEN_CALLS or callee == "load" or callee.startswith("load_"):
                    forbidden.append(f"{fn.name}:{c.lineno} {callee}")
                    continue
                if isinstance(c.func, ast.Name) and c.func.id in funcs and c.func.id not in stack:
                    n += max(counts(funcs[c.func.id], forbidden, (*stack, c.func.id)))
                    continue
                t = target(c, names)
                last = (t or "").rsplit(".", 1)[-1]
                if t and not t.startswith("torchrobust.cli") and not _is_module(t) and t not in CLI_INPUT_CALLS \
                        and not last.startswith("check_") and not last[:1].isupper():
                    n += 1
            return n

        def paths(stmts: list[ast.stmt]) -> list[tuple[int, str]]:
            """(library calls, "" / "return" / "raise") of every path through ``stmts``."""
            out = [(0, "")]
            for s in stmts:
                nxt: list[tuple[int, str]] = []
                for n, end in out:
                    if end:
                        nxt.append((n, end))
                    elif isinstance(s, ast.If):
                        head = calls_in(s.test)
                        nxt += [(n + head + m, e) for m, e in paths(s.body) + paths(s.orelse)]
                    else:
                        ends = {ast.Return: "return", ast.Raise: "raise"}
                        nxt.append((n + calls_in(s), ends.get(type(s), "")))
                out = nxt
            return out

        return [n for n, end in paths(fn.body) if end != "raise"]  # a path that raises a user error does no work

    result: dict[str, tuple[list[int], list[str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "set_defaults":
            for kw in node.keywords:
                if kw.arg == "fn" and isinstance(kw.value, ast.Name):
                    forbidden: list[str] = []
                    n = counts(funcs[kw.value.id], forbidden, (kw.value.id,))
                    result[kw.value.id] = (n, forbidden)
    return result


def test_the_handler_checker_counts_library_calls_per_path() -> None:
    src = ("from ..checkpoint import load, save\nfrom ..x import work, other\nfrom .. import psat\n"
           "def _helper(a):\n    return psat.run(a)\n"
           "def cmd_a(args):\n    m = load(args.c)\n    if args.x:\n        return _helper(m)\n"
           "    if not m:\n        raise E()\n    work(m)\n"
           "    return 0\n"
           "def cmd_b(args):\n    m = load(args.c)\n    out = work(m)\n    other(out)\n    save(m, args.out)\n"
           "def register(sub):\n    sub.set_defaults(fn=cmd_a)\n    sub.set_defaults(fn=cmd_b)\n")
    found = handler_calls(src, "torchrobust.cli.fake")
    assert found["cmd_a"] == ([1, 1], ["cmd_a:7 load"])
    assert found["cmd_b"] == ([2], ["cmd_b:15 load", "cmd_b:18 save"])


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_every_cli_command_is_one_library_call(path: Path) -> None:
    """Each command parses, validates and makes one library call that does the work (issue 12): on every path
    through a handler exactly one call of a torchrobust library function (besides reading inputs and ``check_*``
    validation), and no writes, seeding or loading (``load``/``load_*``: checkpoints, data) of its own. ``info``
    only lists names, so it has no such call (and may load to describe)."""
    for name, (per_path, forbidden) in handler_calls(path.read_text(encoding="utf-8"), _module_name(path)).items():
        if name == "cmd_info":
            forbidden = [f for f in forbidden if not f.split()[-1].startswith("load")]
        assert forbidden == [], f"{path.name}: {name} writes, loads or works itself: {forbidden}"
        if name == "cmd_info":
            continue
        assert set(per_path) == {1}, f"{path.name}: {name} makes {per_path} library calls per path, not one"


def test_citations_of_the_facts_document_resolve() -> None:
    """Every citation ``docs/paper-code-facts.md#<section>`` in the repository names one of its section headings."""
    doc = (REPO / "docs" / "paper-code-facts.md").read_text(encoding="utf-8")
    anchors = {re.sub(r"[^\w\- ]", "", line[3:].strip().lower()).replace(" ", "-")
               for line in doc.splitlines() if line.startswith("## ")}
    assert {"reprogramming-layers", "psat-metrics", "evaluation-checklist"} <= anchors
    bad = [f"{path.relative_to(REPO)}: #{m.group(1)}" for path in _text_files()
           for m in re.finditer(r"paper-code-facts\.md#([\w-]+)", path.read_text(encoding="utf-8", errors="replace"))
           if m.group(1) not in anchors]
    assert bad == [], f"citations of missing sections of docs/paper-code-facts.md: {bad}"


# ------------------------------------------------------------------------------------------ repeated code (issue 12)
#: The shortest run of repeated lines that counts as duplicated code.
WINDOW = 6
_TRIVIAL = re.compile(r"[\s()\[\]{},:]*|(import|from) .*|@\w+|(return|pass|else:|try:|finally:|continue|break)\b.{0,9}")


def _kept_lines(source: str, path: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of the lines that count: white space folded, comments, docstrings, imports, blank and
    trivial lines dropped; in ``attacks/`` the bodies of ``__init__`` (the constructors' argument validation, which
    the issue exempts) are dropped too."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            skip.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
        if path.startswith("torchrobust/attacks/") and isinstance(node, ast.FunctionDef) and node.name == "__init__":
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    kept = []
    for number, line in enumerate(source.splitlines(), 1):
        text = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
        if number not in skip and not _TRIVIAL.fullmatch(text):
            kept.append((number, text))
    return kept


def repeated_runs(sources: dict[str, str], window: int = WINDOW) -> list[str]:
    """``"a.py:L ~ b.py:M"`` for each place where ``window`` consecutive kept lines stand again elsewhere."""
    seen: dict[tuple[str, ...], str] = {}
    found: list[str] = []
    for path, source in sorted(sources.items()):
        kept = _kept_lines(source, path)
        last = -window
        for i in range(len(kept) - window + 1):
            key = tuple(text for _, text in kept[i: i + window])
            first = seen.setdefault(key, f"{path}:{kept[i][0]}")
            if first != f"{path}:{kept[i][0]}" and i >= last + window:  # one row per run, not per window
                found.append(f"{first} ~ {path}:{kept[i][0]}")
                last = i
    return found


def test_the_repeat_checker_sees_copies_and_passes_over_noise() -> None:
    body = "".join(f"    v{i} = f(x, {i})  # step {i}\n" for i in range(6))
    assert repeated_runs({"torchrobust/a.py": f"def g(x):\n{body}", "torchrobust/b.py": f"def h(y):\n{body}\n"}) \
        == ["torchrobust/a.py:2 ~ torchrobust/b.py:2"]
    five = "".join(body.splitlines(keepends=True)[:5])
    assert repeated_runs({"torchrobust/a.py": f"def g(x):\n{body}", "torchrobust/b.py": f"def h(y):\n{five}"}) == []
    inits = {f"torchrobust/attacks/{n}.py": f"class A:\n    def __init__(self, x):\n{textwrap.indent(body, '    ')}"
             for n in "ab"}
    assert repeated_runs(inits) == []
    assert len(repeated_runs({k.replace("attacks/", ""): v for k, v in inits.items()})) == 1


def test_no_six_lines_of_code_stand_twice() -> None:
    """Issue 12: no two places in torchrobust/ share six or more identical lines of code (white space, comments and
    docstrings aside), except the argument validation of the attack constructors."""
    assert repeated_runs(_sources()) == []


def test_the_duplicates_tool_finds_no_repeated_shapes() -> None:
    """The stricter check (same shape with other names) when the ``duplicates`` tool is installed; the attack
    constructors' validation boilerplate is what it may report."""
    tool = shutil.which("duplicates")
    if tool is None:
        pytest.skip("the duplicates tool is not on PATH (test_no_six_lines_of_code_stand_twice covers exact copies)")
    out = subprocess.run([tool, "--repo", "torchrobust", "--most", "200", "--seconds", "60"], cwd=PACKAGE.parent,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "incomplete:" not in out, out
    rows = [r for r in out.splitlines() if re.match(r"D\d+ ", r)]
    bad = [r for r in rows if not all(side.strip().startswith("attacks/") for side in r.split(" ", 1)[1].split("~"))
           or "boilerplate" not in r]
    assert bad == [], "\n".join(bad)
