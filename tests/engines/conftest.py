"""Fixtures for the engine tests: short private socket prefixes, threaded clients."""

from __future__ import annotations

import shutil
import threading

import pytest
from ipi_helpers import short_tmpdir

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
