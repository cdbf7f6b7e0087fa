"""How a failed ``hkd`` command is reported: one line on the terminal, and a traceback that
is never lost.

The project's own messages (an error of a kind in ``MESSAGE_ERRORS`` raised by a ``raise``
statement in this package: a bad config key, a missing or corrupt file) are complete in
one line. Everything else (the same kinds raised by torch or numpy, such as CUDA out of
memory, a key missing from a dict, any other exception) is unexpected and needs its
traceback. With ``--log FILE`` (every Snakemake rule passes its log) the traceback of any
failure is appended to FILE and the terminal line says so; without it an unexpected
error's traceback goes to stderr, followed by the line. An operator missing on Apple MPS
gets a line of its own that names the operator and the way around it.
"""

from __future__ import annotations

import dis
import os
import re
import sys
import traceback
from pathlib import Path

from hkd.config import ConfigError
from hkd.io import append_text

#: the kinds of error the project raises with a message meant for the user
MESSAGE_ERRORS = (ConfigError, FileNotFoundError, ValueError, KeyError, FloatingPointError, RuntimeError)
PACKAGE = Path(__file__).resolve().parent
_RAISE = dis.opmap["RAISE_VARARGS"]


def is_project_message(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a ``raise`` statement in this package with a kind of
    MESSAGE_ERRORS. The innermost frame of its traceback tells: an error from torch or numpy
    ends in their code, a failed operation here (``d[key]``, a tensor op) ends on another
    bytecode than RAISE_VARARGS."""
    tb = exc.__traceback__
    if not isinstance(exc, MESSAGE_ERRORS) or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    in_package = Path(code.co_filename).resolve().is_relative_to(PACKAGE)
    return in_package and 0 <= tb.tb_lasti < len(code.co_code) and code.co_code[tb.tb_lasti] == _RAISE


def _append_traceback(log: str, command: str, trace: str) -> bool:
    """Append ``trace`` to ``log``; False when that fails. Snakemake's rules ``tee -a`` the
    same file: both append, so neither overwrites the other."""
    rank = os.environ.get("RANK")
    header = f"hkd {command}{f' (process {rank})' if rank is not None else ''}: traceback\n"
    try:
        append_text(log, header + trace)
    except OSError:
        return False
    return True


def report_failure(command: str, exc: Exception, log: str | None) -> int:
    """Report ``exc`` (see the module docstring); the command's exit status, 1."""
    sys.stdout.flush()
    sys.stderr.flush()
    expected = is_project_message(exc)
    trace = "".join(traceback.format_exception(exc))
    logged = bool(log) and _append_traceback(log, command, trace)
    if expected:
        print(f"hkd {command}: error: {exc}", file=sys.stderr)
        return 1
    if not logged:
        sys.stderr.write(trace)
    lines = str(exc).strip().splitlines()
    first = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    where = f"traceback in {log}" if logged else "traceback above"
    print(f"hkd {command}: error: {mps_missing_op(exc) or first} ({where})", file=sys.stderr)
    return 1


def mps_missing_op(exc: BaseException) -> str | None:
    """The line for an operator that Apple MPS lacks (torch's NotImplementedError, whose own
    text is a paragraph), with the two ways around it; None for any other error."""
    text = str(exc)
    if not isinstance(exc, NotImplementedError) or "MPS" not in text:
        return None
    op = re.search(r"operator '([^']+)'", text)
    name = f"the operator {op[1]}" if op else "an operator"
    return (
        f"{name} is not implemented on Apple MPS; set PYTORCH_ENABLE_MPS_FALLBACK=1 to run it "
        "on the CPU, or use 'device: cpu' in the config"
    )
