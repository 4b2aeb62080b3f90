"""``symbreak reproduce``: the report code (fast unit tests), the i-PI input edits, and
one end-to-end ``symbreak reproduce --quick`` with the shipped model (a subprocess in
its own session, bounded in time; afterwards no process is left in the output folder
and no socket file of its launcher runs in /tmp).

The end-to-end checks have a meaning of their own, beyond "it ran": the averaged NVE
run keeps the molecule's angular momentum much better than the plain one, the torque of
the averaged model falls with the grid size, and the ice RMS difference is finite.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ipi_helpers import start_process  # noqa: E402

from symbreak.reproduce.inputs import DEFAULT_INPUTS, Input, policy_parameters  # noqa: E402
from symbreak.reproduce.report import (  # noqa: E402
    Outcome,
    Row,
    format_number,
    format_value,
    kept_outcomes,
    markdown_table,
    render,
    write_report,
)


# ======================================================================================
# report code
# ======================================================================================
def test_format_number_and_value():
    assert format_number(1.23456) == "1.23"
    assert format_number(0.000123) == "1.23e-04"
    assert format_number(float("nan")) == "n/a"
    assert format_number(None) == "n/a"
    assert format_number(7) == "7"
    assert format_number(123456.0) == "1.23e+05"
    assert format_value(2.0, 0.123) == "2 ± 0.12"
    assert format_value(2.0, float("nan")) == "2"
    assert format_value("yes") == "yes"


def test_markdown_table_units_study_and_escaping():
    rows = [
        Row("max |L − L0|", 0.047, None, "ħ", "changes"),
        Row("drift", 1.5, 0.25, "meV/ps"),
        Row("missing", float("nan"), unit="eV"),
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| quantity | ours | study | note |"
    assert len(lines) == 5
    assert r"max \|L − L0\|" in lines[2] and "0.047 ħ" in lines[2] and "changes" in lines[2]
    assert "1.5 ± 0.25 meV/ps" in lines[3] and "| — |" in lines[3]
    assert "| n/a |" in lines[4]  # no unit after n/a


def test_render_sections_errors_and_comparison():
    ok = Outcome("1_molecule_nve", "Molecule NVE", elapsed=3.0)
    ok.table("numbers").add("|E_plain − E_ref|", 1.3, unit="meV/molecule", study="2.82 meV")
    ok.table("more").add("torque", 1e-4, unit="eV", study="falls with the grid size")
    ok.plots.append(("a plot", "reproduction/1_molecule_nve/x.png"))
    bad = Outcome("4_ice", "Ice", status="failed", error="RuntimeError: boom")
    text = render([ok, bad], {"quick": True, "model": "m", "threads": 1, "elapsed": 5.0})
    assert "Quick mode: a smoke test" in text
    assert "## 1. Molecule NVE" in text and "## 4. Ice" in text
    assert "Status: **failed**" in text and "RuntimeError: boom" in text
    assert "![a plot](reproduction/1_molecule_nve/x.png)" in text
    assert "(#1-molecule-nve)" in text
    # rows with a study number are collected in the comparison table; remarks are not
    comparison = text.split("## Ours next to the study's", 1)[1].split("## 1.", 1)[0]
    assert "| (1) \\|E_plain − E_ref\\| | 1.3 meV/molecule | 2.82 meV |" in comparison
    assert "falls with" not in comparison
    assert "--quick" in render([ok], {"quick": True}) and "Quick mode" not in render([ok], {})


def test_only_keeps_the_other_experiments_of_a_report_of_the_same_mode_and_model(tmp_path):
    """``--only`` into a folder with a report: the experiments not rerun come back from its
    summary.json as they were (tables, plots, notes, data, status), dated; a report of
    another mode or model is not mixed in."""
    outcomes = []
    for k, status in ((1, "ok"), (2, "partial"), (3, "failed")):
        o = Outcome(f"{k}_exp", f"Experiment {k}", status=status, elapsed=10.0 * k)
        o.table(f"table {k}").add(f"q{k}", 0.5 * k, err=0.1, unit="meV", study="1 meV")
        o.plots.append((f"plot {k}", f"reproduction/{k}_exp/p.png"))
        o.notes.append(f"note {k}")
        o.data = {"x": [k, 2 * k]}
        o.error = "RuntimeError: boom" if status == "failed" else None
        outcomes.append(o)
    meta = {"quick": False, "model": "m", "model_sha256": "ab12", "date": "2026-01-02 03:04"}
    write_report(tmp_path, outcomes, meta)

    kept = kept_outcomes(tmp_path, {2}, quick=False, model_sha256="ab12")
    assert [o.number for o in kept] == ["1", "3"]
    for o, ref in zip(kept, (outcomes[0], outcomes[2]), strict=True):
        assert o.to_dict() | {"date": ""} == ref.to_dict()
        assert o.date == "2026-01-02 03:04"  # the report's, for outcomes without their own
    assert kept_outcomes(tmp_path, {2}, quick=True, model_sha256="ab12") == []
    # another model file under the same name (a retrained shipped model) is not kept
    assert kept_outcomes(tmp_path, {2}, quick=False, model_sha256="cd34") == []
    assert kept_outcomes(tmp_path / "nothing", {2}, quick=False, model_sha256="ab12") == []
    write_report(tmp_path, outcomes, {"quick": False, "model": "m"})  # made before hashes
    assert kept_outcomes(tmp_path, {2}, quick=False, model_sha256="ab12") == []

    rerun = Outcome("2_exp", "Experiment 2", elapsed=7.0, date="2026-02-03 04:05")
    merged = sorted(kept + [rerun], key=lambda o: int(o.number))
    text = render(merged, {"quick": False, "model": "m", "kept": [1, 3]})
    assert "experiment(s) 1, 3 kept from an earlier run" in text
    assert "| ok | 10 s | 2026-01-02 03:04 |" in text
    assert "| ok | 7 s | 2026-02-03 04:05 |" in text
    assert text.index("## 1. Experiment 1") < text.index("## 2. Experiment 2")
    assert "Status: **failed**" in text and "RuntimeError: boom" in text
    assert "run on" not in render(merged, {"quick": False, "model": "m"})


# ======================================================================================
# i-PI input edits
# ======================================================================================
def test_a_missing_model_is_refused_before_any_experiment(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "symbreak", "reproduce", "--out", str(out)]
    proc = subprocess.run(
        cmd + ["--model", str(tmp_path / "nope.pt")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "--model" in proc.stderr and "nope.pt" in proc.stderr, proc.stderr
    assert not out.exists()


def test_policy_parameters():
    assert policy_parameters("none") == "{average: none}"
    assert policy_parameters("legendre:2+inv") == "{average: legendre:2, inversion: true}"
    assert policy_parameters("random+seed=7") == "{average: random, seed: 7}"


def test_make_mts_builds_the_study_recipe(tmp_path):
    inp = Input(DEFAULT_INPUTS / "nvt_water64" / "input.xml").set_stride("pos", 20)
    inp.make_mts("lebedev:3+inv", 10).add_columns("out", ["pot_component_raw(1){electronvolt}"])
    root = inp.root
    sockets = {el.get("name"): el for el in root.iter("ffsocket")}
    assert set(sockets) == {"symbreak", "averaged"}
    assert sockets["averaged"].find("parameters").text == "{average: lebedev:3, inversion: true}"
    assert sockets["symbreak"].find("parameters").text == "{average: none}"
    addresses = {el.find("address").text for el in sockets.values()}
    assert len(addresses) == 2
    weights = {f.get("forcefield"): f.find("mts_weights").text for f in root.iter("force")}
    assert weights == {"symbreak": "[-1, 1]", "averaged": "[1, 0]"}
    dyn = root.find(".//dynamics")
    assert float(dyn.find("timestep").text) == 5.0 and dyn.find("nmts").text == "[1, 10]"
    assert inp.output("pos").get("stride") == "2"  # 10 fs between frames, as before
    assert "pot_component_raw(1)" in inp.output("out").text
    path = inp.write(tmp_path / "mts.xml")
    from symbreak.engines.ipi_xml import read_input

    parsed = read_input(path)  # the launcher accepts it
    assert [s.name for s in parsed.sockets] == ["symbreak", "averaged"]


# ======================================================================================
# end to end
# ======================================================================================
def _processes_under(folder: Path) -> list[str]:
    """Processes whose working directory is inside ``folder`` (i-PI and clients)."""
    found, target = [], str(folder.resolve())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(target):
                found.append(pid)
        except OSError:
            continue
    return found


def _finite_numbers(summary: dict) -> dict[str, int]:
    """Finite numeric table values per experiment."""
    out = {}
    for exp in summary["experiments"]:
        vals = [r["value"] for t in exp["tables"] for r in t["rows"]]
        out[exp["key"]] = sum(
            isinstance(v, (int, float)) and math.isfinite(v) for v in vals if v is not None
        )
    return out


@pytest.mark.timeout(660)
def test_reproduce_quick_end_to_end(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "symbreak", "reproduce", "--quick", "--out", str(out)]
    t0 = time.monotonic()
    proc = start_process(cmd + ["--threads", "1"], tmp_path, "reproduce", limit=620)
    rc = proc.wait(630)
    elapsed = time.monotonic() - t0
    log = proc.output()
    # nothing left behind: processes in the run folders, socket files of the launchers
    time.sleep(0.5)
    assert not _processes_under(out), _processes_under(out)
    tags = set(re.findall(r"/tmp/ipi_(sb\d+_[0-9a-f]+_)", log))
    assert tags, log[-3000:]
    for tag in tags:
        assert not glob.glob(f"/tmp/ipi_{tag}*") + glob.glob(f"/tmp/ipi_symbreak_ctl_{tag}*")
    assert rc == 0, log[-4000:]
    assert "(3/5 3_liquid) start" in log  # progress on stderr

    md = (out / "reproduction.md").read_text()
    assert "Quick mode: a smoke test" in md
    for k in range(1, 6):
        assert re.search(rf"^## {k}\. ", md, re.M), f"section {k} missing"
    assert "Status: **failed**" not in md
    assert "## Ours next to the study's" in md
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / png).is_file() and (out / png).stat().st_size > 1000, png

    summary = json.loads((out / "reproduction" / "summary.json").read_text())
    counts = _finite_numbers(summary)
    assert len(counts) == 5 and all(n >= 3 for n in counts.values()), counts
    exps = {e["key"]: e for e in summary["experiments"]}
    for key in exps:
        assert (out / "reproduction" / key / "summary.json").is_file()

    # NVE: the averaged model (36 rotations) conserves L far better than the plain one
    nve = exps["1_molecule_nve"]["data"]
    dl_plain = nve["runs"]["plain"]["L_change_max_hbar"]
    dl_avg = nve["runs"]["averaged"]["L_change_max_hbar"]
    assert dl_avg < 0.2 * dl_plain, (dl_plain, dl_avg)
    # the torque of the averaged model falls with the grid size
    tau = {g["n_rotations"]: g["torque_mean"] for g in nve["grid_scan_molecule"]}
    assert tau[18] < 0.1 * tau[1] and tau[150] < 0.01 * tau[1], tau
    # ice: relative energies and their RMS difference, finite
    ice = exps["4_ice"]["data"]["relaxed"]
    assert math.isfinite(ice["rms_difference_rel_mean"])
    assert all(math.isfinite(c["rel_mean_averaged"]) for c in ice["structures"])
    # PIMD: quantum kinetic energy of H above the classical 1.5 kT (38.8 meV)
    k_h = exps["5_pimd"]["data"]["plain"]["K_H_meV"][0]
    assert 45.0 < k_h < 250.0, k_h
    print(f"symbreak reproduce --quick took {elapsed:.0f} s")
