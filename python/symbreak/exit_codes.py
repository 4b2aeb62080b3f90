"""Exit codes of every symbreak command, in one table.

Every command returns 0 on success and 1 for an input or usage error found before
anything started; a command that ends because of a signal returns ``128 + n``. The other
codes are per command and listed here, so that scripts and batch systems can rely on them.
"""

from __future__ import annotations

import signal

OK = 0  #: success
USAGE = 1  #: input or usage error; nothing was started

# -- symbreak run (the launcher: i-PI and its clients) -----------------------------------
RUN_IPI_FAILED = 2  #: i-PI failed (non-zero exit, killed by a signal, or it reported a problem)
RUN_CLIENT_FAILED = 3  #: a client failed (non-zero exit or killed)
RUN_TIMEOUT = 4  #: --timeout elapsed; i-PI was stopped cleanly (RESTART written)
RUN_STOPPED_EARLY = 5  #: i-PI stopped early without an error (EXIT file, <total_time>, ...)

# -- symbreak reproduce (the study's experiments, one launcher run each) ---------------------
REPRODUCE_FAILED = 2  #: one or more experiments failed (the report says which and why)

# -- symbreak serve (one i-PI socket client) ---------------------------------------------
SERVE_ERROR = 1  #: protocol error, invalid data, or the model failed
SERVE_CONNECT_FAILED = 2  #: no server came up within the connect timeout
SERVE_DISCONNECTED = 3  #: the server went away without sending EXIT

# -- symbreak control (change a running client's averaging) --------------------------------
CONTROL_FAILED = 2  #: no trusted client answered, or a client refused the update

# -- symbreak export ------------------------------------------------------------------------
EXPORT_FAILED = 2  #: the model file could not be read or written
SERVE_TIMEOUT = 4  #: the server accepted the connection but sent nothing within --timeout


def from_signal(signum: int) -> int:
    """The exit code of a process ended by signal ``signum`` (130 for SIGINT)."""
    return 128 + int(signum)


RUN_HELP = f"""exit codes:
  {OK}      the simulation completed (i-PI ended normally, every client exited cleanly)
  {USAGE}      input or usage error; nothing was started
  {RUN_IPI_FAILED}      i-PI failed (non-zero exit, killed by a signal, or it reported a problem)
  {RUN_CLIENT_FAILED}      a client failed (non-zero exit or killed)
  {RUN_TIMEOUT}      --timeout elapsed; i-PI was stopped cleanly (RESTART written)
  {RUN_STOPPED_EARLY}      i-PI stopped early without an error (EXIT file, <total_time>, ...)
  128+n  the launcher got signal n ({from_signal(signal.SIGINT)}: SIGINT/Ctrl-C, \
{from_signal(signal.SIGTERM)}: SIGTERM); i-PI was
         stopped cleanly (RESTART written)
Every process started is ended and every socket file removed in all cases."""

SERVE_HELP = f"""exit codes:
  {OK}      the server sent EXIT
  {SERVE_ERROR}      protocol error, invalid data, the model failed, or i-PI's INIT
         <parameters> were refused (bad averaging policy: nothing was served)
  {SERVE_CONNECT_FAILED}      no server came up within --connect-timeout
  {SERVE_DISCONNECTED}      the server went away without sending EXIT
  {SERVE_TIMEOUT}      the server accepted the connection but sent nothing within --timeout
  128+n  ended by signal n (130: SIGINT/Ctrl-C, 143: SIGTERM); sockets removed"""
