"""The i-PI XML reader and editor (:mod:`symbreak.engines.ipi_xml`) and the address checks
the launcher makes before starting (:mod:`symbreak.engines.addresses`). No process is
started; every socket a test opens is closed and its file removed, pass or fail."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest
from ipi_helpers import REPO, unique_name

from symbreak.engines.addresses import tcp_busy, unix_busy, unix_listening
from symbreak.engines.ipi_xml import InputEditor, LaunchError, describe, prepare_input, read_input

INPUTS = REPO / "ipi_inputs"

SMALL = """<simulation verbosity='low'>
  <!-- a comment that the copy keeps -->
  <total_steps>5</total_steps>
  <ffsocket name='a' mode='unix' pbc='false'><address>{addr}</address>
    <batch_size>2</batch_size></ffsocket>
  <system>
    <initialize nbeads='2'><file mode='xyz'>s.xyz</file></initialize>
    <forces><force forcefield='a'/></forces>
    <motion mode='dynamics'><dynamics mode='nve'>
      <timestep units='femtosecond'>0.5</timestep></dynamics></motion>
  </system>
</simulation>"""


@pytest.fixture
def small(tmp_path) -> Path:
    (tmp_path / "s.xyz").write_text("1\n\nO 0 0 0\n")
    path = tmp_path / "in.xml"
    path.write_text(SMALL.format(addr="top"))
    return path


@contextlib.contextmanager
def unix_socket(path: str, listen: bool):
    """A unix socket bound at ``path`` (listening or not); closed and removed after."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        if listen:
            s.listen(1)
        else:
            s.close()  # a leftover file: nobody listens
        yield
    finally:
        s.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# ======================================================================================
# reading
# ======================================================================================
def test_read_input_collects_what_the_launcher_needs(small, tmp_path):
    inp = read_input(small)
    (s,) = inp.sockets
    assert (s.name, s.mode, s.address, s.batch_size) == ("a", "unix", "top", 2)
    assert not s.pbc and not s.nested  # pbc='false': the gas-phase client (--no-pbc)
    assert s.socket_path == "/tmp/ipi_top" and s.control_name == "top"
    assert inp.structure == tmp_path / "s.xyz" and inp.structure_mode == "xyz"
    assert (inp.nbeads, inp.total_steps, inp.motion_mode) == (2, 5, "dynamics")
    assert inp.output_prefix == "i-pi"  # i-PI's default without an <output>
    assert describe(InputEditor.load(small)).sockets[0].name == "a"


def test_read_input_names_the_problem(tmp_path):
    with pytest.raises(LaunchError, match="does not exist"):
        read_input(tmp_path / "none.xml")
    (tmp_path / "x.xml").write_text("<input/>")
    with pytest.raises(LaunchError, match="not i-PI's <simulation>"):
        read_input(tmp_path / "x.xml")
    (tmp_path / "y.xml").write_text("<simulation><ffsocket mode='unix'/></simulation>")
    with pytest.raises(LaunchError, match="no name="):
        read_input(tmp_path / "y.xml")


# ======================================================================================
# editing
# ======================================================================================
def test_editor_edits_chain_and_write_a_valid_input(small, tmp_path):
    xml = InputEditor.load(small)
    xml.set_parameters("{average: lebedev:3}").set_total_steps(7).set_beads(4)
    xml.add_output("properties", "out", "[ step, potential ]", 2, flush="1")
    xml.add_columns("out", ["time{picosecond}"]).set_stride("out", 0)
    xml.add_trajectory("diag", "extras", 3, extra_type="average")
    xml.copy_ffsocket("a", "b", "top_b").set_forces({"a": "[-1, 1]", "b": "[1, 0]"})
    xml.set_mts(4).make_paths_absolute()
    out = xml.write(tmp_path / "sub" / "copy.xml")
    inp = read_input(out)  # the launcher reads the copy back
    root = inp.root
    assert [s.name for s in inp.sockets] == ["a", "b"]
    assert [s.address for s in inp.sockets] == ["top", "top_b"]
    assert inp.sockets[0].parameters == "{average: lebedev:3}"
    assert inp.total_steps == 7 and inp.nbeads == 4
    assert root.find("ffsocket/batch_size").text == "4"  # all beads in one request
    assert xml.output("out").text.strip() == "[ step, potential, time{picosecond} ]"
    assert xml.output("out").get("stride") == "1"  # at least 1 (2 // 4 -> 1 as well)
    assert xml.output("diag").get("extra_type") == "average"
    weights = {f.get("forcefield"): f.findtext("mts_weights") for f in root.iter("force")}
    assert weights == {"a": "[-1, 1]", "b": "[1, 0]"}
    assert root.findtext(".//timestep") == "2" and root.findtext(".//nmts") == "[1, 4]"
    assert inp.structure == tmp_path / "s.xyz"  # made absolute: the copy runs elsewhere
    assert "a comment that the copy keeps" in out.read_text()
    with pytest.raises(KeyError):
        xml.output("nope")
    with pytest.raises(LaunchError, match="does not exist"):
        xml.set_structure(tmp_path / "none.xyz")


def test_prepare_input_private_and_kept_names(small):
    inp = read_input(small)
    text = prepare_input(inp, tag="sbX_", steps=3)
    assert inp.sockets[0].socket_path == "/tmp/ipi_sbX_t_top" and inp.total_steps == 3
    assert "<total_steps>3</total_steps>" in text and "sbprogress" in text
    inp = read_input(small)
    prepare_input(inp, tag=None, progress=False)
    assert inp.sockets[0].socket_path == "/tmp/ipi_top"
    inp = read_input(small)
    prepare_input(inp, tag="sbX_", inet=True)
    s = inp.sockets[0]
    assert s.mode == "inet" and s.host == "localhost" and s.port > 0 and s.socket_path is None


def test_prepare_input_refuses_a_socket_path_the_os_cannot_bind(small, tmp_path):
    path = tmp_path / "long.xml"
    path.write_text(small.read_text().replace(">top<", ">" + "x" * 120 + "<"))
    with pytest.raises(LaunchError, match="<ffsocket name='a'>.*longer than the 107"):
        prepare_input(read_input(path), tag=None)


def test_shipped_inputs_read_and_rewrite():
    for xml in sorted(INPUTS.glob("*/input.xml")):
        inp = read_input(xml)
        text = prepare_input(inp, tag="sbS_")
        assert all(s.prefix.startswith("/tmp/ipi_") for s in inp.sockets), xml
        assert "sbprogress" in text, xml


# ======================================================================================
# addresses: is one taken (never by connecting to it)
# ======================================================================================
def test_unix_busy_tells_free_live_and_leftover_apart(tmp_path):
    path = f"/tmp/ipi_{unique_name('addr')}"
    assert unix_busy(path) is None
    with unix_socket(path, listen=True):
        assert unix_listening(path) is True
        assert "is in use" in unix_busy(path)
    with unix_socket(path, listen=False):
        assert unix_listening(path) is False
        assert "no process listens" in unix_busy(path)
    (tmp_path / "file").write_text("")
    assert "not a socket" in unix_busy(str(tmp_path / "file"))


def test_tcp_busy():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
        s.listen(1)
        assert f"localhost:{port} is in use" in tcp_busy("localhost", port)
    assert tcp_busy("localhost", port) is None  # closed: free again
