"""Fixtures for the engine tests: short private socket prefixes, threaded clients; the
LAMMPS plugin and tiny exported models."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from ipi_helpers import short_tmpdir
from lammps_helpers import export_tiny

from symbreak.engines import lammps as sb_lammps
from symbreak.engines.ipi_client import IPIClient


@pytest.fixture
def sock_prefix():
    """A private, short unix-socket prefix ``/tmp/sbXXXX/`` removed after the test."""
    d = short_tmpdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class ThreadedClient:
    """An IPIClient running on a daemon thread (``rc`` once finished)."""

    def __init__(self, client: IPIClient):
        self.client = client
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="ipi-client")

    def _run(self) -> None:
        self.rc = self.client.run()

    def join(self, timeout: float) -> int:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"client thread still running after {timeout} s")
        return self.rc


@pytest.fixture
def threaded_client():
    """Factory: ``start(driver, address, **kwargs) -> ThreadedClient``; all are stopped
    and joined at teardown, pass or fail."""
    started: list[ThreadedClient] = []

    def start(driver, address, **kwargs) -> ThreadedClient:
        kwargs.setdefault("connect_timeout", 10.0)
        tc = ThreadedClient(IPIClient(driver, address, **kwargs))
        started.append(tc)
        tc.thread.start()
        return tc

    try:
        yield start
    finally:
        for tc in started:
            tc.client.stop()
        for tc in started:
            tc.thread.join(5.0)


@pytest.fixture(scope="module")
def plugin() -> Path:
    try:
        return sb_lammps.plugin_path()
    except FileNotFoundError as err:
        pytest.fail(f"the LAMMPS plugin is a required part of symbreak: {err}")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """tiny random PETs (2 message-passing layers, cutoff 3.5 A): 'f32' as exported by
    default, 'f64' exported after model.double(), 'gentle' with energies x 0.05 (smooth
    enough for 0.25 fs NVE without heating to thousands of kelvin)."""
    d = tmp_path_factory.mktemp("models")
    return {
        "f32": export_tiny(d / "tiny_f32.pt"),
        "f64": export_tiny(d / "tiny_f64.pt", double=True),
        "gentle": export_tiny(d / "tiny_gentle.pt", energy_scale=0.05),
    }
