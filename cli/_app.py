"""Argument parsing, model resolution, one-line errors."""

from __future__ import annotations

import argparse
import sys

USAGE = """\
flowsde demo                          # the main job: short compare + nll on the shipped digits model
flowsde compare [--model M] [options] # every sampler, NFE for NFE, vs a float64 reference
flowsde nll [--model M] [--data SRC]  # bits/dim of a data set (alias: flowsde likelihood)
flowsde tune --solver S --nfe N --out grid.json  # a sampler's grid fitted to the model (compare --grid FILE)

--model M: a shipped model (digits-eps, digits-velocity, moons, digits-unet), gmm (exact mixture oracle),
package.module:factory (returns a flowsde.adapters.Diffusion) or a diffusers pipeline folder.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and exit status 2)."""

    def error(self, message):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _dtype(s: str):
    import torch

    table = {"float32": torch.float32, "float64": torch.float64}
    if s not in table:
        raise argparse.ArgumentTypeError(f"{s!r}: choose float32 or float64")
    return table[s]


def _device(s: str):
    import torch

    try:
        d = torch.device(s)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{s!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    return d


def _model_args(p, *, top=False) -> None:
    """The options every command shares (model and run). They are global: accepted before the command
    (``flowsde -q nll``, on the top-level parser: ``top``, with the real defaults) and after it (on each
    command's parser, with no default, so that a value given before the command is not reset)."""
    from ._models import PREDICTIONS, SCHEDULES

    def dflt(v):
        return v if top else argparse.SUPPRESS

    g = p.add_argument_group("model (global: before or after the command)")
    g.add_argument("--model", default=dflt("digits-eps"),
                   help="shipped name, gmm, package.module:factory or a diffusers pipeline folder "
                        "(default: digits-eps)")
    g.add_argument("--schedule", default=dflt("vp"), choices=SCHEDULES,
                   help="gmm only: the noise schedule (default: vp)")
    g.add_argument("--prediction", default=dflt("eps"), choices=PREDICTIONS,
                   help="gmm only: the parameterization (default: eps)")
    g.add_argument("--dim", type=_pos_int, default=dflt(2), help="gmm only: dimension of the mixture (default: 2)")
    g.add_argument("--shape", type=_pos_int, nargs="+", default=dflt(None), metavar="S",
                   help="factory models: the shape of one sample, e.g. 64 or 3 32 32")
    r = p.add_argument_group("run (global: before or after the command)")
    r.add_argument("--device", type=_device, default=dflt(_device("cpu")), help="torch device (default: cpu)")
    r.add_argument("--dtype", type=_dtype, default=dflt(None),
                   help="state dtype: float32 or float64 (default: float32 for a diffusers folder, such as "
                        "digits-unet, float64 otherwise)")
    r.add_argument("--seed", type=int, default=dflt(0), help="everything random derives from it (default: 0)")
    r.add_argument("--threads", type=_pos_int, default=dflt(None), metavar="N",
                   help="CPU threads of torch (default: 1 for the shipped MLPs and gmm, which run fastest on "
                        "one thread, unless OMP_NUM_THREADS is set; torch's default for other models, "
                        "digits-unet included)")
    r.add_argument("--quiet", "-q", action="store_true", default=dflt(False), help="no progress bars")


def _pos_int(s):
    from ._compare import _positive_int

    return _positive_int(s)


def build_parser() -> argparse.ArgumentParser:
    from . import _compare, _demo, _nll, _tune

    ap = _Parser(prog="flowsde", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(ap, top=True)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="{demo,compare,nll,tune}")
    d = sub.add_parser("demo", help="short compare + nll on the shipped digits model (about a minute on a CPU)",
                       description=_plain(_demo.__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(d)
    _demo.add_arguments(d)
    c = sub.add_parser("compare", help="compare samplers NFE for NFE against references",
                       description=_compare_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(c)
    _compare.add_arguments(c)
    n = sub.add_parser("nll", aliases=["likelihood"], help="bits/dim of a data set under the model",
                       description=_plain(_nll.__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(n)
    _nll.add_arguments(n)
    t = sub.add_parser("tune", help="fit a sampler's grid at one NFE to the model (a grid file for compare --grid)",
                       description=_plain(_tune.__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(t)
    _tune.add_arguments(t)
    return ap


def _plain(doc: str) -> str:
    """A module docstring as help text: rst markup (``code``, `ref`) shown as plain text."""
    import re

    return re.sub(r"`+([^`]+)`+", r"\1", doc or "").strip() + "\n"


def _compare_doc() -> str:
    return ("Every sampler on one model from the same prior draws x_T, at a ladder of NFE budgets.\n"
            "PF-ODE samplers are compared with a tight float64 RK45 solution from the same x_T; reverse-SDE\n"
            "samplers with a fine-step Euler-Maruyama solution on the same Brownian path. The table (stdout)\n"
            "has the error to that reference, a sliced Wasserstein-2 distance to independent reference samples\n"
            "(with the noise-floor row), and wall time; CSV, JSON and two PNGs go to --out.\n"
            "Solvers: euler heun edm_heun rk45 euler_maruyama pc edm_churn, and the other samplers of\n"
            "flowsde.solvers.METHODS.")


def main(argv=None) -> int:
    """The ``flowsde`` command; returns the exit status (0 ok, 2 bad input, 1 a failed solve).

    Under ``torchrun`` only rank 0 prints (the result and the errors every rank raises alike)."""
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:  # name the command whose options these are not (argparse names the top-level parser)
        _Parser(prog=f"flowsde {args.cmd}" if getattr(args, "cmd", None) else "flowsde").error(
            f"unrecognized arguments: {' '.join(extra)}")
    import contextlib

    import flowsde

    from ._errors import CLIError, for_cli
    from ._models import default_dtype, resolve

    prog = f"flowsde {args.cmd}"
    quiet_rank = rank() != 0
    model = None
    with contextlib.ExitStack() as stack:
        if quiet_rank:  # the other ranks compute their share; rank 0 prints the result
            import io

            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            if args.device.type == "cuda":
                import torch

                if not torch.cuda.is_available():
                    raise CLIError(f"--device {args.device}: CUDA is not available here; use --device cpu.")
            if args.dtype is None:
                args.dtype = default_dtype(args.model)
            model = resolve(args.model, device=args.device, dtype=args.dtype, schedule=args.schedule,
                            prediction=args.prediction, dim=args.dim,
                            shape=tuple(args.shape) if args.shape else None)
            stack.enter_context(_threads(args, model))
            if args.cmd == "compare":
                from ._compare import main as run
                return run(args, model)
            if args.cmd in ("nll", "likelihood"):
                from ._nll import main as run
                return run(args, model)
            if args.cmd == "tune":
                from ._tune import main as run
                return run(args, model)
            from ._demo import main as run
            return run(args, model, ap.parse_args)
        except flowsde.SolveError as e:
            _say(f"{prog}: solve failed: {for_cli(_one_line(e), command=args.cmd, model=model)}")
            return 1
        except (flowsde.InputError, CLIError) as e:
            if not quiet_rank:  # raised alike on every rank (the library's contract): said once, by rank 0
                _say(f"{prog}: error: {for_cli(_one_line(e), command=args.cmd, model=model)}")
            return 2
        except KeyboardInterrupt:
            _say(f"{prog}: interrupted")
            return 130
        except BrokenPipeError:  # stdout closed early (`flowsde compare | head`): stop quietly
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


def _say(line: str) -> None:
    """One line on stderr, prefixed with the rank under torchrun (rank 0: no prefix)."""
    r = rank()
    sys.stderr.write(("" if r == 0 else f"[rank {r}] ") + line + "\n")


def rank() -> int:
    """This process's rank under torchrun (``RANK``; 0 without it)."""
    import os

    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


#: the CLI's small models (64-dim MLPs, the mixture oracle): one thread is fastest (docs/cli.md, "Threads")
_SMALL = ("shipped", "gmm")


@__import__("contextlib").contextmanager
def _threads(args, model):
    """torch's CPU threads for the run, restored after: ``--threads N``; else, unless ``OMP_NUM_THREADS``
    is set, 1 for the shipped MLPs and gmm on a CPU (thread start-up costs more than it saves on them; a
    diffusers UNet, digits-unet included, keeps torch's threads)."""
    import os

    import torch

    n = args.threads
    from ._models import is_diffusers

    small = model.kind in _SMALL and not is_diffusers(model.spec)
    if n is None and not os.environ.get("OMP_NUM_THREADS") and small and args.device.type == "cpu":
        n = 1
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if n is not None:
            torch.set_num_threads(before)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
