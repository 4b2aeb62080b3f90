"""i-PI inputs of the reproduction: the shipped ``ipi_inputs/`` edited per run, and
one call of the launcher per run.

The edits are small and explicit (averaging parameters, output strides, extra output
columns, beads, and the study's multiple-time-step recipe built on a single-socket
input), made with the launcher's i-PI XML editor
(:class:`symbreak.engines.ipi_xml.InputEditor`); the launcher
(:func:`symbreak.engines.launcher.launch`) then does what ``symbreak run`` does: private
sockets, clients, progress, time limit and cleanup.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .. import exit_codes
from ..engines.ipi_xml import InputEditor, describe
from ..engines.launcher import LaunchOptions, launch


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


class Input(InputEditor):
    """An i-PI input file loaded for editing (``root`` is its ``<simulation>``), with
    the reproduction's own recipes on top of :class:`~symbreak.engines.ipi_xml.InputEditor`."""

    def __init__(self, path: str | Path):
        loaded = InputEditor.load(path)
        super().__init__(loaded.tree, loaded.source)
        self.structure = describe(self).structure  #: initial structure file (absolute)

    def socket(self, name: str | None = None):
        """The ``<ffsocket>`` called ``name`` (the first one if None)."""
        return self.ffsocket(name)

    def set_average(self, spec: str, socket: str | None = None) -> Input:
        """Averaging of one force field (through its ``<parameters>``)."""
        return self.set_parameters(policy_parameters(spec), socket)

    def make_mts(self, average: str, nmts: int) -> Input:
        """The study's recipe on a single-socket input (as ``ipi_inputs/mts_water512``):
        the socket becomes the plain model on the inner steps, ``mts_weights [-1, 1]``; a
        copy of it, averaged over ``average``, enters on the outer step only,
        ``[1, 0]``; the timestep is multiplied by ``nmts`` (the input's one becomes the
        inner step) and output strides, counted in outer steps, divided by ``nmts``."""
        plain = self.socket()
        name = plain.get("name")
        address = ((plain.findtext("address") or "ipi").strip()) + "_avg"
        self.copy_ffsocket(name, "averaged", address)
        self.set_average("none", name).set_average(average, "averaged")
        self.set_forces({name: "[-1, 1]", "averaged": "[1, 0]"})
        return self.set_mts(nmts)


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
        if self.exit_code == exit_codes.OK:
            return "ok"
        partial = self.exit_code == exit_codes.RUN_TIMEOUT and self.steps_done
        return "partial" if partial else "failed"

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
