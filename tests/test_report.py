"""`torchrobust report`: tables in every format, flags marked, figures embedded; rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch
from torch import nn

from torchrobust.cli import main
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate import sweep
from torchrobust.evaluate.report import build_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(40, 1, 4, 4), torch.randint(0, 3, (40,))
    res = sweep(m, x, y, attacks=["fgsm", "pgd"], eps=[0, 0.1, 0.2], attack_kwargs={"pgd": {"steps": 3}})
    res.write(d / "plain")
    res.flags = [{"code": "zero_gradients", "message": "30% zero input gradients", "advice": "run BPDA"}]
    res.write(d / "masked")
    cert = {"radii": [0.0, 0.5], "certified_accuracy": [0.9, 0.4], "sigma": 0.25, "n": 100, "n_examples": 10}
    (d / "certify.json").write_text(json.dumps(cert))
    return d


def test_report_files(run_dir):
    paths = build_report(run_dir, title="T")
    page = paths["html"].read_text()
    assert page.count("<img") == 2 and "data:image/png;base64," in page
    assert "UNRELIABLE" in page and "zero_gradients" in page
    tex = sorted((run_dir / "report").glob("*.tex"))
    assert len(tex) == 3 and all("\\toprule" in p.read_text() for p in tex)
    md = paths["md"].read_text()
    assert "Certified accuracy" in md and "| 0.1 |" in md
    csvs = {p.name for p in (run_dir / "report").glob("*.csv")}
    assert "certify.csv" in csvs


def test_report_says_whether_checks_ran(run_dir, tmp_path):
    import shutil as sh

    d = tmp_path / "plain_only"
    sh.copytree(run_dir / "plain", d)
    page = build_report(d)["html"].read_text()
    assert "No gradient-masking checks were recorded" in page and "UNRELIABLE" not in page
    doc = json.loads((d / "results.json").read_text())
    doc["checks_run"] = True
    (d / "results.json").write_text(json.dumps(doc))
    page = build_report(d)["html"].read_text()
    assert "No gradient-masking flag was raised" in page


def test_report_cli_and_errors(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(TorchRobustError, match="no results"):
        build_report(tmp_path / "empty")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(run_dir):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is required: apt-get install chromium"
    page = build_report(run_dir)["html"]
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={run_dir / 'chrome-profile'}", "--virtual-time-budget=5000",
                        "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-figures="(\d+)" data-figures-rendered="(\d+)"', r.stdout)
    assert m, r.stdout[:500] + r.stderr[-2000:]
    assert int(m.group(1)) == 2 and m.group(1) == m.group(2)


def test_weak_results_are_labelled_weak_everywhere(run_dir, tmp_path):
    """FGSM + PGD-3 only: results.json/md and the HTML report say the numbers are weak; a strong run does not."""
    import shutil as sh

    d = tmp_path / "weak"
    sh.copytree(run_dir / "plain", d)
    assert json.loads((d / "results.json").read_text())["strength"] == "weak"
    assert "Strength: weak" in (d / "results.md").read_text()
    paths = build_report(d)
    assert "Strength: weak" in paths["html"].read_text() and "Strength: weak" in paths["md"].read_text()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    strong = sweep(m, x, y, attacks=["fgsm", "pgd"], eps=[0, 0.1], attack_kwargs={"pgd": {"steps": 3, "restarts": 2}})
    assert strong.strength == "strong"
    strong.write(tmp_path / "strong")
    assert "Strength: weak" not in (tmp_path / "strong" / "results.md").read_text()
    assert "Strength: weak" not in build_report(tmp_path / "strong")["html"].read_text()


def test_report_reads_psat_and_preset_tables_with_their_kinds(tmp_path):
    """PSAT's psat_table.json / routing.json and a paper preset's <name>_table.json are Table JSON: the report
    renders them with their PERCENT columns (fractions shown × 100), while the raw rows stay readable."""
    from torchrobust.evaluate.report import _collect
    from torchrobust.experiments.reprogramming import report_tables
    from torchrobust.psat import MultiNormRow
    from torchrobust.psat.evaluation import read_table_json, routing_json, write_tables

    psat = tmp_path / "psat"
    rows = [MultiNormRow("PSAT (entropy)", 0.875, {"Linf": 0.5, "L2": 0.625, "L1": 0.25}, 0.2, 0.125, 8, 100, None)]
    write_tables(rows, psat)
    assert read_table_json((psat / "psat_table.json").read_text())[0]["per_norm"]["L2"] == 0.625
    routed = [{"input": "clean", "n": 8, "routed": {"Linf": 5, "L2": 3}, "aggregate_acc": 0.75,
               "own_member_acc": None}]
    (psat / "routing.json").write_text(routing_json(routed))
    preset = tmp_path / "preset"
    preset.mkdir()
    result = {"preset": "table1", "title": "Table 1", "config": {"pgd_steps": 20},
              "rows": [{"row": "NRPM", "fgsm": [98.5, 90.0, 80.0, 70.0, 60.0, 50.0, 40.25],
                        "paper_fgsm": [99.0, 91.0, 81.0, 71.0, 61.0, 51.0, 41.0], "lams": [0.5, 0.5],
                        "pgd20": {"clean": 98.5, "0.1": 77.5}}]}
    for key, tab in report_tables(result).items():
        (preset / f"table1_{key}.json").write_text(tab.to_json())
    tables = {t.source: t for t in _collect(tmp_path)[0]}
    assert set(tables) == {"psat/psat_table.json", "psat/routing.json", "preset/table1_table.json",
                           "preset/table1_pgd_table.json"}
    assert all(t.percent for t in tables.values())
    assert tables["psat/psat_table.json"].table.column("clean").kind.value == "percent"
    assert tables["psat/routing.json"].table.column("→ Linf").kind.value == "int"
    paths = build_report(tmp_path)
    md = {p.name: p.read_text() for p in (tmp_path / "report").glob("*.md")}
    assert "87.50" in md["psat_psat_table.md"] and "Accuracies in %." in md["psat_psat_table.md"]
    assert "75.0" in md["psat_routing.md"] and "| 5 |" in md["psat_routing.md"]
    assert "40.2" in md["preset_table1_table.md"] and "paper" in md["preset_table1_table.md"]
    assert "77.5" in md["preset_table1_pgd_table.md"]
    assert "87.50" in paths["html"].read_text()


def test_report_reads_a_preset_strong_table(tmp_path):
    """A preset run with the default strong evaluation: <name>_strong_table.json, its title naming the attacks."""
    from torchrobust.evaluate.report import _collect
    from torchrobust.experiments.reprogramming import report_tables

    result = {"preset": "table1", "title": "Table 1", "config": {"pgd_steps": 20, "robust_eval": "strong",
                                                                "robust_attacks": ["fgsm", "apgd-ce", "apgd-t"]},
              "rows": [{"row": "NRPM", "fgsm": [98.5, 90.0, 80.0, 70.0, 60.0, 50.0, 40.25], "paper_fgsm": None,
                        "strong": {"clean": 98.5, "0.1": 12.5},
                        "strong_attacks": {"fgsm": {"clean": 98.5, "0.1": 90.0}}}]}
    tabs = report_tables(result)
    assert set(tabs) == {"table", "strong_table"}
    assert "worst case over FGSM, APGD-CE, APGD-T (100 iterations)" in (tabs["strong_table"].title or "")
    for key, tab in tabs.items():
        (tmp_path / f"table1_{key}.json").write_text(tab.to_json())
    tables = {t.source: t for t in _collect(tmp_path)[0]}
    assert tables["table1_strong_table.json"].table.rows[0]["0.1"] == 0.125
