"""symbreak.allocator: with glibc kept from trimming, repeated model calls stop faulting
their memory in; SYMBREAK_KEEP_FREED_MEMORY=0 leaves glibc's defaults (the reference)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CALLS = """
import json, resource, statistics, torch
from helpers import water_frame
from symbreak.evaluator import Evaluator, Structure
from symbreak.allocator import keep_freed_memory
torch.set_num_threads(1)
ev = Evaluator("water-revpbe0d3")
s = Structure.from_atoms(water_frame(0))
for _ in range(3):
    ev.compute(s)
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ev.compute(s)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# the median call: the odd call still faults a few MB in (Python's own arenas, heap layout)
print(json.dumps({"faults": statistics.median(faults), "mean": statistics.mean(faults),
                  "kept": keep_freed_memory()}))
"""


def _faults_per_call(keep: str) -> dict:
    env = dict(os.environ, SYMBREAK_KEEP_FREED_MEMORY=keep, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", CALLS], capture_output=True, text=True, timeout=120, env=env,
        cwd=os.path.dirname(__file__),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_model_calls_stop_faulting_pages_in():
    kept = _faults_per_call("1")
    # glibc's defaults fault the activations in afresh by an amount that depends on the
    # heap's layout: medians of 550-4,600 pages per call for the shipped model, and about
    # one process in ten faults almost none. The reference is a process that does fault.
    for _ in range(4):
        default = _faults_per_call("0")
        if default["mean"] > 500:
            break
    assert kept["kept"] and not default["kept"]
    print(
        f"minor page faults per call of 192 atoms (median, mean): glibc's defaults "
        f"{default['faults']:.0f}, {default['mean']:.0f}; kept {kept['faults']:.0f}, "
        f"{kept['mean']:.0f}"
    )
    assert default["mean"] > 500
    assert kept["faults"] < 0.1 * default["faults"]
