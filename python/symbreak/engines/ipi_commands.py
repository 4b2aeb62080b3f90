"""Command-line front ends for i-PI: ``symbreak serve``, ``control``, ``ipi-pes-path``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .. import exit_codes
from .sockets import IPI_DEFAULT_PREFIX as DEFAULT_PREFIX


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model to i-PI as a socket client",
        description="Connect to an i-PI server and answer its force requests with a symbreak "
        "model, plain or rotationally averaged. The averaging can also be set per <ffsocket> "
        "(<parameters>{average: lebedev:5, inversion: true}</parameters>) and changed while "
        "running with `symbreak control`.",
        epilog=exit_codes.SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="water-revpbe0d3", help="shipped model name or file")
    p.add_argument(
        "--template",
        help="structure file (any ASE format) giving the atomic species in i-PI's order "
        "(i-PI does not send them); usually i-PI's initial structure",
    )
    p.add_argument("--species", help="alternative to --template: e.g. 'O,H,H,O,H,H'")
    p.add_argument("--address", required=True, help="i-PI <address> (socket name or host)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--unix", action="store_true", default=True, help="unix socket (default)")
    mode.add_argument("--inet", action="store_true", help="TCP socket (--host/--port)")
    p.add_argument("--host", help="inet: server host (default: --address)")
    p.add_argument("--port", type=int, default=31415, help="inet: server port")
    p.add_argument(
        "--socket-prefix",
        default=DEFAULT_PREFIX,
        help=f"i-PI sockets_prefix / -S: socket = PREFIX + ADDRESS (default {DEFAULT_PREFIX})",
    )
    p.add_argument(
        "--average",
        default="none",
        help="averaging policy: none | random | legendre:L | lebedev:L, options +inv, "
        "+seed=N, +max=N (e.g. lebedev:3+inv)",
    )
    p.add_argument(
        "--inversion",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add (--inversion) or remove (--no-inversion) the inversion; default: as --average",
    )
    p.add_argument(
        "--extensions",
        metavar="DIR",
        help="folder of a metatomic model's TorchScript extensions (if not installed)",
    )
    p.add_argument("--seed", type=int, help="seed of the random rotations")
    p.add_argument("--device", help="where the model runs: cpu (default), cuda or cuda:N")
    p.add_argument("--rotation-batch", type=int, help="rotations per model call (memory bound)")
    p.add_argument(
        "--workers",
        type=int,
        help="rotation groups evaluated in parallel threads (default: one per torch thread "
        "for small systems; 1: sequential)",
    )
    p.add_argument("--no-pbc", action="store_true", help="gas phase: ignore the box")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--connect-timeout", type=float, default=120.0, help="seconds to wait for i-PI")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="once connected, seconds to wait for the server's first message (default: "
        f"forever); a server that accepts and never speaks ends the client with exit code "
        f"{exit_codes.SERVE_TIMEOUT}",
    )
    p.add_argument("--no-control", action="store_true", help="no run-time control socket")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_serve)

    c = subparsers.add_parser(
        "control",
        help="change the averaging of running symbreak clients",
        description="Change (or query) the averaging policy of the running `symbreak serve` "
        "clients of an address; applies from their next force request.",
    )
    c.add_argument("--address", required=True)
    c.add_argument("--socket-prefix", default=DEFAULT_PREFIX)
    c.add_argument("--average", help="none | random | legendre:L | lebedev:L")
    c.add_argument("--inversion", action=argparse.BooleanOptionalAction, default=None)
    c.add_argument("--seed", type=int)
    c.add_argument("--query", action="store_true", help="print the current state only")
    c.add_argument("--wait", type=float, default=5.0, help="seconds to wait for it to apply")
    c.set_defaults(func=_control)

    q = subparsers.add_parser(
        "ipi-pes-path",
        help="print the path of the in-process i-PI potential file",
        description="Print the path of symbreak's i-PI PES file, for "
        "<ffdirect><pes>custom</pes><pes_path>…</pes_path> and i-pi-py_driver -m custom -P.",
    )
    q.set_defaults(func=lambda args: print(pes_path()) or 0)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def pes_path() -> Path:
    return Path(__file__).with_name("ipi_pes.py")


def _serve(args) -> int:
    import torch

    from .ipi_client import IPIClient
    from .ipi_driver import SymbreakDriver

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="symbreak serve: %(message)s",
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        driver = SymbreakDriver(
            model=args.model,
            template=args.template,
            species=args.species,
            average=args.average,
            inversion=args.inversion,
            seed=args.seed,
            rotation_batch=args.rotation_batch,
            workers=args.workers,
            pbc=not args.no_pbc,
            extensions_directory=args.extensions,
            device=args.device,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"symbreak serve: {err}", file=sys.stderr)
        return exit_codes.USAGE
    client = IPIClient(
        driver,
        address=args.address,
        unix=not args.inet,
        host=args.host,
        port=args.port,
        sockets_prefix=args.socket_prefix,
        connect_timeout=args.connect_timeout,
        first_message_timeout=args.timeout,
        control=not args.no_control,
    )
    code = client.run()
    if code not in (0, None) and client.error:
        print(f"symbreak serve: {client.error}", file=sys.stderr)
    if client.driver_busy:
        # a signal interrupted a model call still running on the driver's daemon thread:
        # end now (sockets are already closed and removed) rather than let interpreter
        # shutdown race with the model's native code
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _control(args) -> int:
    from .control import ControlError, send_control

    policy = {
        k: v
        for k, v in (("average", args.average), ("inversion", args.inversion), ("seed", args.seed))
        if v is not None
    }
    try:
        if args.average is not None or args.seed is not None:
            # refuse a bad policy here, before any client sees it (the grammar's message)
            from ..rotations import AveragingPolicy

            base = AveragingPolicy.parse(args.average or "none")
            base.with_options(seed=None if args.seed is None else int(args.seed))
        if args.query or not policy:
            reply = send_control(args.address, args.socket_prefix, query=True)
        else:
            reply = send_control(args.address, args.socket_prefix, wait=args.wait, **policy)
    except ValueError as err:  # a bad policy text or option
        print(f"symbreak control: {err}", file=sys.stderr)
        return exit_codes.USAGE
    except ControlError as err:
        print(f"symbreak control: {err}", file=sys.stderr)
        return exit_codes.CONTROL_FAILED
    print(json.dumps(reply, indent=1))
    return exit_codes.OK if reply.get("ok") else exit_codes.CONTROL_FAILED
