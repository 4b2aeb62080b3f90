"""i-PI inputs of the reproduction: the shipped ``ipi_inputs/`` edited per run, and
one call of the launcher per run.

The edits are small and explicit (averaging parameters, output strides, extra output
columns, beads, and the study's multiple-time-step recipe built on a single-socket
input); the launcher (:func:`symbreak.engines.launcher.launch`) then does what
``symbreak run`` does: private sockets, clients, progress, time limit and cleanup.
"""

from __future__ import annotations

import copy
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..engines.launcher import EXIT_OK, EXIT_TIMEOUT, LaunchOptions, launch, read_input


def find_inputs() -> Path:
    """The runnable i-PI inputs: installed with the package (``symbreak/ipi_inputs``, see
    CMakeLists.txt), or the repository's ``ipi_inputs/`` when symbreak runs from a checkout
    (editable install: python/symbreak/reproduce/ → repository root)."""
    here = Path(__file__).resolve()
    candidates = (here.parents[1] / "ipi_inputs", here.parents[3] / "ipi_inputs")
    return next((c for c in candidates if c.is_dir()), candidates[0])


#: where ``symbreak reproduce`` reads its inputs unless given ``--inputs``
DEFAULT_INPUTS = find_inputs()


def policy_parameters(spec: str) -> str:
    """i-PI ``<parameters>`` text for an averaging spec: ``"legendre:2+inv"`` →
    ``{average: legendre:2, inversion: true}`` (the client reads it from INIT)."""
    from ..rotations import AveragingPolicy

    p = AveragingPolicy.parse(spec)
    items = [f"average: {p.spec}"]
    if p.inversion:
        items.append("inversion: true")
    if p.seed is not None:
        items.append(f"seed: {p.seed}")
    return "{" + ", ".join(items) + "}"


class Input:
    """An i-PI input file loaded for editing (``root`` is its ``<simulation>``)."""

    def __init__(self, path: str | Path):
        self.source = Path(path).resolve()
        self.tree = ET.parse(self.source)
        self.root = self.tree.getroot()
        self.structure = read_input(self.source).structure

    def socket(self, name: str | None = None) -> ET.Element:
        """The ``<ffsocket>`` called ``name`` (the first one if None)."""
        for el in self.root.iter("ffsocket"):
            if name is None or el.get("name") == name:
                return el
        raise KeyError(f"{self.source}: no <ffsocket name='{name}'>")

    def set_average(self, spec: str, socket: str | None = None) -> Input:
        """Averaging of one force field (through its ``<parameters>``)."""
        el = self.socket(socket)
        par = el.find("parameters")
        if par is None:
            par = ET.SubElement(el, "parameters")
        par.text = policy_parameters(spec)
        return self

    def output(self, filename: str) -> ET.Element:
        """The ``<properties>`` / ``<trajectory>`` output writing ``filename``."""
        for el in self.root.find("output"):
            if el.get("filename") == filename:
                return el
        raise KeyError(f"{self.source}: no output filename='{filename}'")

    def set_stride(self, filename: str, stride: int) -> Input:
        self.output(filename).set("stride", str(max(1, int(stride))))
        return self

    def add_columns(self, filename: str, columns: list[str]) -> Input:
        """Append columns to a ``<properties>`` list, e.g. ``kinetic_cv(H){electronvolt}``."""
        el = self.output(filename)
        text = (el.text or "").strip().rstrip("]").strip()
        el.text = " " + text + ", " + ", ".join(columns) + " ] "
        return self

    def add_trajectory(self, filename: str, what: str, stride: int, **attrib: str) -> Input:
        el = ET.SubElement(
            self.root.find("output"), "trajectory", {"filename": filename, "stride": str(stride)}
        )
        for k, v in attrib.items():
            el.set(k, v)
        el.text = f" {what} "
        return self

    def set_beads(self, nbeads: int) -> Input:
        """Beads of the path integral; a socket with ``<batch_size>`` gets all of them
        in one request."""
        self.root.find(".//initialize").set("nbeads", str(int(nbeads)))
        for el in self.root.iter("ffsocket"):
            if el.find("batch_size") is not None:
                el.find("batch_size").text = str(int(nbeads))
        return self

    def make_mts(self, average: str, nmts: int) -> Input:
        """The study's recipe on a single-socket input (as ``ipi_inputs/mts_water512``):
        the socket becomes the plain model on the inner steps, ``mts_weights [-1, 1]``; a
        copy of it, averaged over ``average``, enters on the outer step only,
        ``[1, 0]``; the timestep is multiplied by ``nmts`` (the input's one becomes the
        inner step) and output strides, counted in outer steps, divided by ``nmts``."""
        plain = self.socket()
        name = plain.get("name")
        avg = copy.deepcopy(plain)
        avg.set("name", "averaged")
        addr = avg.find("address")
        addr.text = (addr.text or "ipi").strip() + "_avg"
        idx = list(self.root).index(plain)
        self.root.insert(idx + 1, avg)
        self.set_average("none", name).set_average(average, "averaged")
        forces = self.root.find(".//forces")
        for f in list(forces):
            forces.remove(f)
        for ff, w in ((name, "[-1, 1]"), ("averaged", "[1, 0]")):
            ET.SubElement(
                ET.SubElement(forces, "force", {"forcefield": ff}), "mts_weights"
            ).text = w
        dyn = self.root.find(".//dynamics")
        ts = dyn.find("timestep")
        ts.text = f"{float(ts.text) * nmts:g}"
        nm = dyn.find("nmts")
        if nm is None:
            nm = ET.Element("nmts")
            dyn.insert(list(dyn).index(ts) + 1, nm)
        nm.text = f"[1, {int(nmts)}]"
        for el in self.root.find("output"):
            if el.get("stride") and el.tag != "checkpoint":
                el.set("stride", str(max(1, int(el.get("stride")) // nmts)))
        return self

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.indent(self.tree)
        self.tree.write(path, encoding="unicode")
        return path


@dataclass
class RunInfo:
    """How one launcher run ended: ``ok`` (completed), ``partial`` (stopped by its time
    limit, outputs usable), else failed; the step reached and the wall seconds."""

    name: str
    run_dir: Path
    exit_code: int
    message: str
    steps_done: int | None
    steps_total: int | None
    elapsed: float

    @property
    def status(self) -> str:
        if self.exit_code == EXIT_OK:
            return "ok"
        return "partial" if self.exit_code == EXIT_TIMEOUT and self.steps_done else "failed"

    def to_dict(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "elapsed_s": round(self.elapsed, 2),
        }


class RunFailed(RuntimeError):
    """A launcher run that produced nothing usable."""


class Interrupted(RuntimeError):
    """The launcher got SIGINT/SIGTERM/SIGHUP: stop the whole reproduction."""


def run_input(
    inp: Input,
    run_dir: Path,
    *,
    steps: int,
    timeout: float,
    model: str,
    threads: int,
    structure: Path | None = None,
) -> RunInfo:
    """Write ``inp`` to ``run_dir/source.xml`` and run it with the launcher (progress
    lines on stderr, at most ``timeout`` s). A run stopped by the time limit after some
    steps is kept (``partial``); any other failure raises :class:`RunFailed`."""
    src = inp.write(run_dir / "source.xml")
    opts = LaunchOptions(
        model=model,
        timeout=timeout,
        threads=threads,
        run_dir=run_dir,
        steps=steps,
        structure=str(structure or inp.structure),
        progress="lines",
        progress_interval=30.0,
        grace=10.0,
    )
    res = launch(src, opts, stream=sys.stderr)
    info = RunInfo(
        run_dir.name,
        res.run_dir,
        res.exit_code,
        res.message,
        res.progress[-1].step if res.progress else None,
        steps,
        res.elapsed,
    )
    if res.exit_code >= 128:
        raise Interrupted(f"run {run_dir.name}: {res.message}")
    if info.status == "failed":
        raise RunFailed(f"run {run_dir.name}: exit code {res.exit_code}: {res.message}")
    return info
