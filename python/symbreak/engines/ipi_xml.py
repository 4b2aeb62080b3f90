"""i-PI XML inputs: reading what symbreak needs from one, and editing a copy of it.

- :func:`read_input` parses an input into an :class:`IPIInput`: its ``<ffsocket>``
  force fields (:class:`SocketSpec`: how a client reaches each), the initial structure,
  the beads, ``<total_steps>``, the motion mode and the output prefix.
- :class:`InputEditor` holds the XML tree and makes the edits symbreak needs on a copy
  (force-field parameters, sockets, beads, steps, structure, outputs, multiple time
  stepping); every edit returns the editor, so edits chain. The reproduction builds its
  inputs with it (:mod:`symbreak.reproduce.inputs`).
- :func:`prepare_input` is the launcher's rewrite of a copy for one private run.

i-PI 3.3.1 conventions relied on: a unix socket lives at ``sockets_prefix + address``
(:mod:`symbreak.engines.sockets`), except an ``<ffsocket>`` nested in another force field
(``<ffrotations>``, ``<ffcommittee>``), which ignores ``sockets_prefix`` and uses
``/tmp/ipi_``; an ``<ffsocket>`` without ``mode`` is inet.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .addresses import free_port
from .progress import PROGRESS_NAME, progress_columns
from .sockets import IPI_DEFAULT_PREFIX, check_unix_path, unix_socket_path


class LaunchError(RuntimeError):
    """A problem with the input or the environment, found before anything started."""


# ====================================================================================
# Reading
# ====================================================================================
@dataclass
class SocketSpec:
    """One ``<ffsocket>`` of the input and how its clients reach it."""

    name: str
    mode: str  #: "unix" or "inet"
    address: str  #: i-PI <address> as written in the run's copy (unix name or bind host)
    port: int
    parameters: str
    nested: bool  #: inside another force field (ignores sockets_prefix)
    pbc: bool  #: False only for an explicit pbc='false' (gas phase: --no-pbc)
    batch_size: int
    element: ET.Element = field(repr=False)
    prefix: str = IPI_DEFAULT_PREFIX  #: unix socket prefix the clients must use
    host: str = "localhost"  #: inet: host the clients connect to

    @property
    def socket_path(self) -> str | None:
        """The unix socket file (None for inet)."""
        return unix_socket_path(self.address, self.prefix) if self.mode == "unix" else None

    @property
    def control_name(self) -> str:
        """Name of the clients' control socket (``symbreak control --address``)."""
        return self.address if self.mode == "unix" else f"{self.host}_{self.port}"


@dataclass
class IPIInput:
    """An i-PI input file, parsed with the parts the launcher needs."""

    path: Path
    xml: InputEditor = field(repr=False)
    sockets: list[SocketSpec]
    structure: Path | None  #: initial structure file (absolute), if any
    structure_mode: str | None
    nbeads: int
    total_steps: int | None
    motion_mode: str
    output_prefix: str

    @property
    def tree(self) -> ET.ElementTree:
        return self.xml.tree

    @property
    def root(self) -> ET.Element:
        return self.xml.root


def text_of(el: ET.Element | None, default: str = "") -> str:
    """The stripped text of ``el``; ``default`` if there is no element or no text."""
    return (el.text or "").strip() if el is not None and el.text is not None else default


def _bool_attr(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "t", "y")


def read_input(path: str | Path) -> IPIInput:
    """Parse an i-PI input and collect its sockets, initial structure and run length.

    Raises :class:`LaunchError` naming the problem (file missing, not XML, not an i-PI
    ``<simulation>``, no ``<ffsocket>``, a socket mode symbreak cannot serve).
    """
    return describe(InputEditor.load(path))


def describe(xml: InputEditor) -> IPIInput:
    """The :class:`IPIInput` of a loaded input (see :func:`read_input`)."""
    path, root = xml.source, xml.root
    sockets: list[SocketSpec] = []
    parents = {child: parent for parent in root.iter() for child in parent}
    for el in root.iter("ffsocket"):
        name = el.get("name")
        if not name:
            raise LaunchError(f"{path}: an <ffsocket> has no name='...' attribute")
        mode = el.get("mode", "inet").strip().lower()
        if mode == "shm":
            raise LaunchError(
                f"{path}: <ffsocket name='{name}' mode='shm'> is not supported by "
                "symbreak serve; use mode='unix'"
            )
        if mode not in ("unix", "inet"):
            raise LaunchError(f"{path}: <ffsocket name='{name}'> has unknown mode '{mode}'")
        try:
            port = int(text_of(el.find("port"), "65535"))
            batch = int(text_of(el.find("batch_size"), "1"))
        except ValueError as err:
            raise LaunchError(f"{path}: <ffsocket name='{name}'>: {err}") from None
        sockets.append(
            SocketSpec(
                name=name,
                mode=mode,
                address=text_of(el.find("address"), "localhost"),
                port=port,
                parameters=text_of(el.find("parameters")),
                nested=parents.get(el) is not root,
                pbc=_bool_attr(el.get("pbc")) is not False,
                batch_size=batch,
                element=el,
            )
        )
    if not sockets:
        raise LaunchError(
            f"{path}: no <ffsocket> in the input: nothing for symbreak clients to serve "
            "(an <ffdirect> input runs with plain `i-pi`)"
        )

    structure = mode_ = None
    init_file = root.find("./system/initialize/file")
    if init_file is None:
        init_file = root.find(".//initialize/file")
    if init_file is not None and text_of(init_file):
        structure = (path.parent / text_of(init_file)).resolve()
        mode_ = init_file.get("mode", "chk")
    init = root.find(".//initialize")
    try:
        nbeads = int(init.get("nbeads", "1")) if init is not None else 1
        steps_text = text_of(root.find("total_steps"))
        total_steps = int(steps_text) if steps_text else None
    except ValueError as err:
        raise LaunchError(f"{path}: {err}") from None
    motion = root.find(".//motion")
    output = root.find("output")
    return IPIInput(
        path=path,
        xml=xml,
        sockets=sockets,
        structure=structure,
        structure_mode=mode_,
        nbeads=nbeads,
        total_steps=total_steps,
        motion_mode=motion.get("mode", "dynamics") if motion is not None else "dynamics",
        output_prefix=output.get("prefix", "i-pi") if output is not None else "i-pi",
    )


# ====================================================================================
# Editing
# ====================================================================================
def set_child_text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    """Set the text of ``parent``'s child ``<tag>``, creating the child if missing."""
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag)
    el.text = text
    return el


class InputEditor:
    """The XML tree of an i-PI input, with the edits symbreak makes to a copy of it.

    Every edit changes the tree in place and returns the editor. ``source`` is the file
    it was read from (relative paths in the input are relative to its folder).
    """

    def __init__(self, tree: ET.ElementTree, source: Path):
        self.tree, self.source = tree, Path(source)

    @classmethod
    def load(cls, path: str | Path) -> InputEditor:
        """Parse ``path`` (comments kept); :class:`LaunchError` if it is missing, not
        XML, or not an i-PI ``<simulation>``."""
        path = Path(path).resolve()
        if not path.is_file():
            raise LaunchError(f"i-PI input file '{path}' does not exist")
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
        try:
            tree = ET.parse(path, parser=parser)
        except ET.ParseError as err:
            raise LaunchError(f"{path}: not a valid XML file: {err}") from None
        root = tree.getroot()
        if root.tag != "simulation":
            raise LaunchError(f"{path}: the root element is <{root.tag}>, not i-PI's <simulation>")
        return cls(tree, path)

    @property
    def root(self) -> ET.Element:
        """The ``<simulation>`` element."""
        return self.tree.getroot()

    # -------------------------------------------------------------- force fields
    def ffsocket(self, name: str | None = None) -> ET.Element:
        """The ``<ffsocket>`` called ``name`` (the first one if None); KeyError if none."""
        for el in self.root.iter("ffsocket"):
            if name is None or el.get("name") == name:
                return el
        raise KeyError(f"{self.source}: no <ffsocket name='{name}'>")

    def set_parameters(self, text: str, socket: str | None = None) -> InputEditor:
        """The ``<parameters>`` of an ``<ffsocket>`` (sent to its clients with INIT)."""
        set_child_text(self.ffsocket(socket), "parameters", text)
        return self

    def set_socket(
        self,
        el: ET.Element,
        *,
        mode: str | None = None,
        address: str | None = None,
        port: int | None = None,
    ) -> InputEditor:
        """Mode, ``<address>`` and ``<port>`` of the ``<ffsocket>`` element ``el``."""
        if mode is not None:
            el.set("mode", mode)
        if address is not None:
            set_child_text(el, "address", address)
        if port is not None:
            set_child_text(el, "port", str(int(port)))
        return self

    def copy_ffsocket(self, name: str, new_name: str, address: str) -> InputEditor:
        """Insert a copy of ``<ffsocket name=name>`` right after it, renamed and with its
        own address (a second force field served by other clients)."""
        el = self.ffsocket(name)
        new = copy.deepcopy(el)
        new.set("name", new_name)
        set_child_text(new, "address", address)
        parent = next(p for p in self.root.iter() if el in list(p))
        parent.insert(list(parent).index(el) + 1, new)
        return self

    def set_sockets_prefix(self, prefix: str) -> InputEditor:
        """``<simulation sockets_prefix=...>``: top-level unix sockets at prefix + address."""
        self.root.set("sockets_prefix", prefix)
        return self

    def set_forces(self, mts_weights: dict[str, str]) -> InputEditor:
        """Replace the components of ``<forces>`` by one ``<force>`` per force field, with
        its ``<mts_weights>`` (e.g. ``{"plain": "[-1, 1]", "averaged": "[1, 0]"}``)."""
        forces = self.root.find(".//forces")
        for f in list(forces):
            forces.remove(f)
        for ff, w in mts_weights.items():
            force = ET.SubElement(forces, "force", {"forcefield": ff})
            ET.SubElement(force, "mts_weights").text = w
        return self

    # -------------------------------------------------------------- system and motion
    def set_beads(self, nbeads: int) -> InputEditor:
        """Beads of the path integral; a socket with ``<batch_size>`` gets all of them
        in one request."""
        self.root.find(".//initialize").set("nbeads", str(int(nbeads)))
        for el in self.root.iter("ffsocket"):
            if el.find("batch_size") is not None:
                el.find("batch_size").text = str(int(nbeads))
        return self

    def set_total_steps(self, steps: int) -> InputEditor:
        set_child_text(self.root, "total_steps", str(int(steps)))
        return self

    def set_structure(self, path: str | Path) -> InputEditor:
        """The initial structure: ``<initialize><file mode='ase'>`` (any file ASE reads,
        with its cell)."""
        spath = Path(path).resolve()
        if not spath.is_file():
            raise LaunchError(f"structure file '{spath}' does not exist")
        init = self.root.find(".//initialize")
        if init is None:
            raise LaunchError(f"{self.source}: no <initialize> to put the structure in")
        f = init.find("file")
        if f is None:
            f = ET.SubElement(init, "file")
        f.attrib.clear()
        f.set("mode", "ase")
        f.text = str(spath)
        return self

    def make_paths_absolute(self) -> InputEditor:
        """Files i-PI reads (``<initialize>`` children with a ``mode``, ``<pes_path>``),
        relative to the input's folder, become absolute (so the copy runs anywhere)."""
        base = self.source.parent
        for init in self.root.iter("initialize"):
            for child in init:
                if child.get("mode") and text_of(child):
                    p = Path(text_of(child))
                    if not p.is_absolute() and (base / p).exists():
                        child.text = str((base / p).resolve())
        for el in self.root.iter("pes_path"):
            p = Path(text_of(el))
            if text_of(el) and not p.is_absolute():
                el.text = str((base / p).resolve())
        return self

    def set_mts(self, nmts: int) -> InputEditor:
        """Multiple time stepping with ``nmts`` inner steps: the timestep is multiplied by
        ``nmts`` (the input's one becomes the inner step), ``<nmts>[1, nmts]</nmts>``,
        and the output strides, counted in outer steps, divided by ``nmts``."""
        dyn = self.root.find(".//dynamics")
        ts = dyn.find("timestep")
        ts.text = f"{float(ts.text) * nmts:g}"
        nm = dyn.find("nmts")
        if nm is None:
            nm = ET.Element("nmts")
            dyn.insert(list(dyn).index(ts) + 1, nm)
        nm.text = f"[1, {int(nmts)}]"
        for el in self.outputs():
            if el.get("stride") and el.tag != "checkpoint":
                el.set("stride", str(max(1, int(el.get("stride")) // nmts)))
        return self

    # -------------------------------------------------------------- outputs
    def outputs(self) -> list[ET.Element]:
        """The children of ``<output>`` (properties, trajectories, checkpoints)."""
        out = self.root.find("output")
        return [] if out is None else list(out)

    def output(self, filename: str) -> ET.Element:
        """The ``<properties>`` / ``<trajectory>`` output writing ``filename``."""
        for el in self.outputs():
            if el.get("filename") == filename:
                return el
        raise KeyError(f"{self.source}: no output filename='{filename}'")

    def set_stride(self, filename: str, stride: int) -> InputEditor:
        self.output(filename).set("stride", str(max(1, int(stride))))
        return self

    def add_columns(self, filename: str, columns: list[str]) -> InputEditor:
        """Append columns to a ``<properties>`` list, e.g. ``kinetic_cv(H){electronvolt}``."""
        el = self.output(filename)
        text = (el.text or "").strip().rstrip("]").strip()
        el.text = " " + text + ", " + ", ".join(columns) + " ] "
        return self

    def add_output(
        self, kind: str, filename: str, what: str, stride: int, **attrib: str
    ) -> InputEditor:
        """A new ``<properties>`` or ``<trajectory>`` (``kind``) writing ``what``; an
        ``<output>`` (prefix ``i-pi``, i-PI's default) is created if the input has none."""
        output = self.root.find("output")
        if output is None:
            output = ET.Element("output", {"prefix": "i-pi"})
            self.root.insert(0, output)
        el = ET.SubElement(output, kind, {"filename": filename, "stride": str(stride)})
        for k, v in attrib.items():
            el.set(k, v)
        el.text = f" {what} "
        return self

    def add_trajectory(self, filename: str, what: str, stride: int, **attrib: str) -> InputEditor:
        return self.add_output("trajectory", filename, what, stride, **attrib)

    # -------------------------------------------------------------- writing
    def to_string(self) -> str:
        """The input as XML text (indented, ending with a newline)."""
        ET.indent(self.tree)
        return ET.tostring(self.root, encoding="unicode") + "\n"

    def write(self, path: str | Path) -> Path:
        """Write the input to ``path`` (folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_string())
        return path


# ====================================================================================
# The launcher's rewrite of a copy
# ====================================================================================
def prepare_input(
    inp: IPIInput,
    *,
    tag: str | None,
    inet: bool = False,
    host: str | None = None,
    steps: int | None = None,
    structure: str | Path | None = None,
    progress: bool = True,
) -> str:
    """Rewrite ``inp`` in place for a private run and return the new XML text.

    Args:
        tag: private name tag (see :func:`~.addresses.new_tag`); None keeps the input's
            sockets prefix, addresses and ports as written (``--keep-prefix``).
        inet: turn unix sockets into inet sockets (free ports unless ``tag`` is None).
        host: inet: the address i-PI binds to and clients connect to (default: the
            input's address for inet sockets, ``localhost`` for converted ones).
        steps: new ``<total_steps>``.
        structure: new initial structure (any file ASE reads, with its cell).
        progress: add the ``sbprogress`` properties output.
    """
    xml = inp.xml
    prefix = xml.root.get("sockets_prefix", IPI_DEFAULT_PREFIX)
    if tag is not None:  # "t_"/"n_": a top-level and a nested address never share a file
        prefix = IPI_DEFAULT_PREFIX + tag + "t_"
        xml.set_sockets_prefix(prefix)
    for s in inp.sockets:
        if inet and s.mode == "unix":
            s.mode, s.address = "inet", host or "localhost"
            s.port = free_port(s.address)
            xml.set_socket(s.element, mode="inet", address=s.address, port=s.port)
        elif s.mode == "inet":
            if host:
                s.address = host
                xml.set_socket(s.element, address=host)
            if tag is not None:
                s.port = free_port(s.address)
                xml.set_socket(s.element, port=s.port)
        elif s.nested and tag is not None:
            s.address = tag + "n_" + s.address
            xml.set_socket(s.element, address=s.address)
        if s.mode == "unix":
            s.prefix = IPI_DEFAULT_PREFIX if s.nested else prefix
            try:
                check_unix_path(s.socket_path, f"unix socket path of <ffsocket name='{s.name}'>")
            except ValueError as err:
                raise LaunchError(str(err)) from None
        else:
            s.prefix = prefix  # the clients' control sockets go there
            s.host = "localhost" if s.address in ("", "0.0.0.0") else s.address

    xml.make_paths_absolute()
    if structure is not None:
        xml.set_structure(structure)
        inp.structure, inp.structure_mode = Path(structure).resolve(), "ase"
    if steps is not None:
        xml.set_total_steps(steps)
        inp.total_steps = int(steps)
    if progress:
        if xml.root.find("output") is None:  # keep the prefix the input was read with
            xml.root.insert(0, ET.Element("output", {"prefix": inp.output_prefix}))
        columns = progress_columns(inp.motion_mode)
        xml.add_output("properties", PROGRESS_NAME, columns, 1, flush="1")
    return xml.to_string()
