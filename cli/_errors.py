"""The command line's own error, and the library's messages rewritten for the command line.

The library's messages name its Python arguments (``dequantize=False``, ``data_range``, a grid that starts
below ``t_max``); a command-line user can only type flags. :func:`for_cli` keeps the library's diagnosis and
replaces the advice with what the command line offers (the library's messages are not changed).
"""

from __future__ import annotations

import re

from flowsde import InputError


class CLIError(InputError):
    """Bad command-line input: the message says what is wrong and how to fix it."""


#: Python argument names in the library's advice -> the flags of ``flowsde nll`` / ``flowsde compare``.
_NAMES = [
    (re.compile(r"\bdequantize=False\b"), "--continuous"),
    (re.compile(r"\blevels/bits/data_range\b"), "--levels / --bits / --data-range"),
    (re.compile(r"\bthe data_range it was scaled to\b"), "the --data-range it was scaled to"),
    (re.compile(r"\binto data_range\b"), "into --data-range"),
    (re.compile(r"\bsamples=(\d+)"), r"--batch-size \1"),
    (re.compile(r"\btime_warp=([\d.]+)"), r"--time-warp \1"),
    (re.compile(r"\btime_warp\b"), "--time-warp"),
]

_BPD_TOL = re.compile(r"\bbpd_tol\b")

#: advice that needs an option the command line does not have (a grid or a span that starts below t_max,
#: a diffusion coefficient, a prior): cut from here on and replaced by what the command line can do.
_NO_FLAG = re.compile(
    r"(Start the grid just below t_max|start slightly inside the schedule|start the grid slightly inside the "
    r"schedule|To start from pure noise at t_max|Pass t_max < schedule\.t_max|or start the time grid just below)",
    re.IGNORECASE)
_METHOD = re.compile(r"method='([\w:]+)'")


def for_cli(message: str, *, command: str = "", model=None) -> str:
    """``message`` (one line) with the library's Python names replaced by the flags of the command line, and
    advice that needs an option the command line lacks replaced by the command line's own."""
    msg = " ".join(str(message).split())
    # the likelihood's tolerance: nll's --bpd-tol, compare's --likelihood-tols (gmm rows)
    msg = _BPD_TOL.sub("--bpd-tol" if command in ("nll", "likelihood") else "--likelihood-tols", msg)
    for pat, rep in _NAMES:
        msg = pat.sub(rep, msg)
    m = _NO_FLAG.search(msg)
    if m is None:
        return msg
    head = msg[: m.start()].rstrip(" ;:,(").rstrip()
    if head.endswith(" or"):
        head = head[:-3].rstrip(" ;,")
    if not head.endswith("."):
        head += "."
    return f"{head} {_alpha_zero_advice(msg, command, model)}"


def _alpha_zero_advice(msg: str, command: str, model) -> str:
    """What a command-line user can do when the model's schedule has alpha = 0 at t_max (pure noise there:
    ``--schedule linear``, rectified flow) and something cannot start there."""
    gmm = getattr(model, "kind", None) == "gmm"
    start = "The command line starts at the schedule's t_max (it has no option to start below it): "
    sampler = _METHOD.search(msg)
    if sampler is not None:
        return start + f"leave {sampler.group(1)} out of --solvers (it cannot start where alpha = 0)."
    if "reverse_sde" in msg:
        return start + ("pass --beta 0, or leave the reverse-SDE samplers (euler_maruyama, pc, ...) out of "
                        "--solvers.")
    if gmm and command == "nll":
        return start + "use --prediction velocity, whose PF-ODE is defined at alpha = 0."
    if gmm:
        return start + "use --prediction velocity, x0 or v, whose conversions are finite there."
    if command == "nll":
        return start + ("use a model predicting velocity, x0 or v; a start below t_max needs the Python API "
                        "(Diffusion.log_likelihood(t_max=..., prior_logp=...)).")
    return start + ("use a model predicting velocity, x0 or v; a start below t_max needs the Python API "
                    "(flowsde.solve on a grid from t_max - 1e-3).")
