"""``flowsde nll``: bits/dim of a data set under a model (``flowsde likelihood`` is an alias).

The data must be in the model's own data space: where the model declares its data range and
quantization levels (the shipped digits models: 17 levels on [-1, 1]), data outside that range, or a
``--data-range`` / ``--levels`` / ``--bits`` that differs, is refused (scale the data first).
Without ``--out`` the per-sample rows are not saved.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch

from ._compare import _positive_float, _positive_int
from ._errors import CLIError
from ._models import import_factory, is_factory_spec
from ._output import out_file, progress_enabled



#: the command line's default ``bpd_tol`` (bits/dim per sample). The library's is 1e-5 (score_sde's RK45
#: tolerance); the command line reports a data set's mean bits/dim, whose standard error over a few hundred
#: samples is 1e-2 or more, so 1e-4 per sample is far below what is printed and costs about half the NFE
#: (docs/cli.md, ``flowsde nll``).
BPD_TOL = 1e-4


def add_arguments(p) -> None:
    p.add_argument("--data", default=None, metavar="SRC",
                   help="FILE.npy, FILE.pt (a tensor (N, *event)) or package.module:factory returning a torch "
                        "Dataset or tensor (default: the shipped model's held-out test split)")
    p.add_argument("--levels", type=_positive_int, default=None,
                   help="quantization bins of the data (default: the model's, e.g. 17 for the shipped digits "
                        "models); uniform dequantization over them")
    p.add_argument("--bits", type=_positive_int, default=None, help="same as --levels 2**BITS")
    p.add_argument("--continuous", action="store_true", help="continuous data: no dequantization")
    p.add_argument("--data-range", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                   help="the interval the data's levels span (default: the model's, else -1 1; where the model "
                        "declares one, only that one is accepted)")
    p.add_argument("--trace", choices=["exact", "hutchinson"], default="exact",
                   help="divergence estimator: exact trace, or Hutchinson with --probes probes")
    p.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes per sample (default 1)")
    p.add_argument("--bpd-tol", type=_bpd_tol, default=BPD_TOL, metavar="TOL",
                   help=f"accuracy of each sample's bits/dim, promised per sample (default {BPD_TOL:g}: 100x below "
                        "the 0.01 of a bits/dim quoted to two decimals; the library's default is 1e-5; "
                        "docs/likelihood.md, 'What bpd_tol promises'); --rtol/--atol default to it")
    p.add_argument("--rtol", type=_positive_float, default=None, help="RK45 rtol of the state (default: --bpd-tol)")
    p.add_argument("--atol", type=_positive_float, default=None, help="RK45 atol of the state (default: --bpd-tol)")
    p.add_argument("--time-warp", type=_time_warp, default=None, metavar="RHO",
                   help="integrate in s = t^(1/RHO) (default: the library's, 1.5 on a span in t >= 0; 1: in t "
                        "itself; docs/likelihood.md, 'Time warp'); a Discrete (diffusers/DDPM) schedule is "
                        "integrated in VP time tau (the continuous VP schedule's time at the same log-SNR), "
                        "s = tau^(1/RHO)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="samples per solve (default 64); "
                   "results do not depend on it")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="only the first N samples")
    p.add_argument("--out", default=None, metavar="FILE.csv",
                   help="one row per sample (index,nats,bpd,stderr,nfe,status), written as it goes "
                        "(default: rows are not saved, only the summary is printed)")


def _bpd_tol(s: str) -> float:
    """An argparse type: the likelihood's ``bpd_tol``, a finite number in ``(0, 1)`` bits/dim."""
    v = _positive_float(s)
    if v >= 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{s!r} must be below 1 (bits/dim of error per sample; e.g. 1e-3)")
    return v


def _time_warp(s: str) -> float:
    """An argparse type: the likelihood's ``time_warp``, a finite number ``>= 1``."""
    v = _positive_float(s)
    if v < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{s!r} must be >= 1 (1 integrates in t itself; 1.5 in s = t^(1/1.5))")
    return v


def load_data(src: str, model) -> tuple:
    """``(data, description)`` where data is a tensor ``(N, *event)`` or a Dataset of such samples."""
    p = Path(src)
    if p.suffix.lower() == ".npy":
        if not p.is_file():
            raise CLIError(f"--data {src}: no such file.")
        import numpy as np

        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CLIError(f"--data {src}: cannot read it as a .npy array ({e}).") from None
        if not np.issubdtype(arr.dtype, np.number):
            raise CLIError(f"--data {src}: dtype {arr.dtype} is not numeric.")
        data = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float64)
    elif p.suffix.lower() in (".pt", ".pth"):
        if not p.is_file():
            raise CLIError(f"--data {src}: no such file.")
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's unpickler errors
            raise CLIError(f"--data {src}: cannot load it with torch.load(weights_only=True) "
                           f"({type(e).__name__}).") from None
        if not isinstance(data, torch.Tensor):
            raise CLIError(f"--data {src}: holds a {type(data).__name__}; save one tensor (N, *event) with "
                           f"torch.save(x, path).")
        data = data.to(torch.float64)
    elif is_factory_spec(src):
        fn = import_factory("--data", src, "a torch Dataset or a tensor (N, *event)")
        try:
            data = fn()
        except Exception as e:
            raise CLIError(f"--data {src}: the factory raised {type(e).__name__}: {e}") from None
        if isinstance(data, torch.Tensor):
            data = data.to(torch.float64)
        elif not isinstance(data, torch.utils.data.Dataset):
            raise CLIError(f"--data {src}: the factory returned {type(data).__name__}; return a torch Dataset "
                           f"(items: tensors of the model's sample shape) or a tensor (N, *event).")
        else:
            data = _XOnly(data)
    else:
        raise CLIError(f"--data {src}: expected FILE.npy, FILE.pt or package.module:factory.")
    _check_shape(data, model, src)
    return data, src


class _XOnly(torch.utils.data.Dataset):
    """A Dataset whose items may be ``(x, label, ...)`` tuples, as ``x`` only."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        if isinstance(item, (tuple, list)):
            item = item[0]
        return torch.as_tensor(item)


def _check_shape(data, model, src) -> None:
    if isinstance(data, torch.Tensor):
        n, shape = (data.shape[0] if data.dim() else 0), tuple(data.shape[1:])
    else:
        try:
            n = len(data)
            shape = tuple(data[0].shape) if n else ()
        except Exception as e:
            raise CLIError(f"--data {src}: cannot read its first item ({type(e).__name__}: {e}).") from None
    if n == 0:
        raise CLIError(f"--data {src}: holds no samples.")
    if shape != tuple(model.event_shape):
        hint = (f"; reshape it to (N, {', '.join(map(str, model.event_shape))})"
                if math.prod(shape) == math.prod(model.event_shape) else "")
        raise CLIError(f"--data {src}: samples of shape {shape}, but {model.spec} takes "
                       f"{tuple(model.event_shape)}{hint}.")
    if isinstance(data, torch.Tensor) and not bool(torch.isfinite(data).all()):
        raise CLIError(f"--data {src}: contains NaN or Inf.")


def declared(model) -> str:
    """The model's own description of its data, for messages: ``"data in [-1, 1], 17 levels"``."""
    parts = []
    if model.data_range is not None:
        parts.append(f"data in [{model.data_range[0]:g}, {model.data_range[1]:g}]")
    if model.levels is not None:
        parts.append(f"{model.levels} levels")
    return ", ".join(parts)


def _check_declared(model, args) -> None:
    """Refuse a ``--data-range`` / ``--levels`` / ``--bits`` that contradicts what the model declares: the
    model sees the data as given (nothing is rescaled), so another range or grid is a wrong answer."""
    what = f"{model.spec} declares its data ({declared(model)})"
    if args.data_range is not None and model.data_range is not None:
        lo, hi = (float(v) for v in args.data_range)
        mlo, mhi = model.data_range
        if not (math.isclose(lo, mlo, abs_tol=1e-9) and math.isclose(hi, mhi, abs_tol=1e-9)):
            raise CLIError(f"--data-range {lo:g} {hi:g}: {what}; the model sees the data as given, so data on "
                           f"another range gives a wrong answer. Scale the data to [{mlo:g}, {mhi:g}] "
                           f"(x' = {mlo:g} + {mhi - mlo:g} (x - {lo:g}) / {hi - lo:g}) and drop --data-range.")
    if model.levels is not None:
        given = args.levels if args.levels is not None else (2 ** args.bits if args.bits is not None else None)
        if given is not None and given != model.levels:
            flag = f"--levels {args.levels}" if args.levels is not None else f"--bits {args.bits}"
            raise CLIError(f"{flag}: {what}; {given} levels would dequantize over the wrong bins. Drop {flag} "
                           f"(the model's {model.levels} levels are the default).")


def check_range(data, model, src: str, levels, limit=None) -> None:
    """Refuse data outside the model's declared range (widened by half a bin with levels: the support of
    dequantized data), naming the model's range and levels. A Dataset is checked on its first item here
    (the library checks every batch; its message is rewritten the same way)."""
    if model.data_range is None:
        return
    lo, hi = model.data_range
    half = 0.5 * (hi - lo) / (levels - 1) if levels else 0.0
    if isinstance(data, torch.Tensor):
        x = data[:limit] if limit else data
    else:
        try:
            x = torch.as_tensor(data[0]).to(torch.float64)
        except Exception:  # noqa: BLE001 - the shape check reads it already; leave it to the library
            return
    mn, mx = float(x.min()), float(x.max())
    if mn < lo - half - 1e-9 or mx > hi + half + 1e-9:
        raise CLIError(f"--data {src}: values in [{mn:.6g}, {mx:.6g}], but {model.spec} declares its data "
                       f"({declared(model)}): the model sees the data as given, so bits/dim of other data is a "
                       f"wrong answer. Scale the data to [{lo:g}, {hi:g}] first (e.g. x' = {lo:g} + {hi - lo:g} "
                       f"(x - {mn:.6g}) / {mx - mn:.6g} for data spanning [{mn:.6g}, {mx:.6g}]).")


def quantization(model, args):
    """``(levels, bits, data_range)`` for dataset_nll from the options and the model."""
    if args.continuous:
        if args.levels or args.bits:
            raise CLIError("--continuous: no dequantization; drop --levels / --bits.")
        if args.data_range is not None:
            _check_declared(model, args)
        return None, None, None
    if args.levels and args.bits:
        raise CLIError("--levels and --bits: give one (levels = 2**bits).")
    if args.levels is not None and args.levels < 2:
        raise CLIError(f"--levels {args.levels}: need at least 2 quantization bins.")
    if args.data_range is not None:
        lo, hi = args.data_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise CLIError(f"--data-range {lo:g} {hi:g}: need finite LO < HI.")
    _check_declared(model, args)
    dr = tuple(args.data_range) if args.data_range else (model.data_range or (-1.0, 1.0))
    levels = args.levels
    if levels is None and args.bits is None:
        levels = model.levels
        if levels is None:
            if model.exact is not None or model.kind == "shipped":  # their data are continuous
                return None, None, None
            raise CLIError(f"{model.spec}: the data's quantization is unknown; pass --levels L (e.g. 256 for "
                           f"8-bit images), --bits B, or --continuous.")
    return levels, args.bits, dr


def main(args, model) -> int:
    from flowsde.workloads import dataset_nll

    if args.probes > 1 and args.trace == "exact":
        raise CLIError("--probes: only with --trace hutchinson (the exact trace needs no probes).")
    exact = None
    if args.data is not None:
        data, what = load_data(args.data, model)
    elif model.test_data is not None:
        data, what = model.test_data(), f"{model.spec}'s held-out test split"
    elif model.exact is not None:
        sched = model.diffusion.schedule
        t_end = float(sched.t_min)
        n = args.limit or 256
        target = model.exact.marginal(sched, t_end)
        data = target.sample(n, generator=torch.Generator().manual_seed(args.seed))
        exact = target.log_prob(data)
        what = f"{n} exact samples of the mixture's marginal at t = {t_end:g}"
    else:
        raise CLIError(f"--model {model.spec}: has no data set of its own; pass --data "
                       f"FILE.npy|FILE.pt|pkg.mod:factory.")
    levels, bits, dr = quantization(model, args)
    if args.data is not None:
        check_range(data, model, args.data,
                    levels if levels is not None else (2 ** bits if bits else model.levels), args.limit)
    out = out_file(args.out) if args.out else None
    t0 = time.perf_counter()
    with _errors_raised_once():
        res = _run(dataset_nll, model, args, data, levels, bits, dr, out)
    print(summary(res, model, what, levels, bits, dr, args, time.perf_counter() - t0))
    if out is not None:
        print(f"rows: {out.resolve()}")
    else:
        print("rows: not saved (pass --out FILE.csv to keep one row per sample)")
    if exact is not None:  # the last line (scripts read it)
        d = math.prod(model.event_shape)
        ex = exact[: len(_rows(res))]
        ex_bpd = float((-ex / (d * math.log(2))).mean())
        print(f"exact mean bits/dim of the same points (closed form): {ex_bpd:.5f}")
    return 0


def _run(dataset_nll, model, args, data, levels, bits, dr, out):
    """dataset_nll; an InputError raised by it says what the model declares where the data are outside it."""
    from flowsde import InputError

    try:
        return _call(dataset_nll, model, args, data, levels, bits, dr, out)
    except InputError as e:
        msg = " ".join(str(e).split())
        if "lie outside" in msg and model.data_range is not None:
            head = msg.split(" Scale the data")[0]
            raise CLIError(f"{head} {model.spec} declares its data ({declared(model)}): scale the data to "
                           f"[{model.data_range[0]:g}, {model.data_range[1]:g}] first.") from None
        raise


class _DropInputErrors:
    """A logging filter: the library logs a batch's InputError and then raises it; the command prints the
    raised one (once, on rank 0), so the logged copy is dropped. Other records (failed samples' statuses,
    other errors, with their rank) pass."""

    def filter(self, record) -> bool:
        return not (record.levelno >= 40 and ": InputError: " in record.getMessage())


@contextlib.contextmanager
def _errors_raised_once():
    """While dataset_nll runs: :class:`_DropInputErrors` on its logger."""
    log, f = logging.getLogger("flowsde.nll"), _DropInputErrors()
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


def _call(dataset_nll, model, args, data, levels, bits, dr, out):
    return dataset_nll(model.diffusion, data, levels=levels, bits=bits, data_range=dr, trace=args.trace,
                      probes=args.probes, rtol=args.rtol, atol=args.atol, batch_size=args.batch_size, generator=args.seed,
                      limit=args.limit, out=str(out) if out else None, progress=progress_enabled(args.quiet),
                      device=args.device, dtype=args.dtype,
                      **({} if args.time_warp is None else dict(time_warp=args.time_warp)),
                      bpd_tol=args.bpd_tol)


def _rows(res):
    return getattr(res, "rows", [])


def summary(res, model, what, levels, bits, dr, args, seconds) -> str:
    n = len(_rows(res))
    if levels is not None:
        q = f"uniform dequantization over {levels} levels on [{dr[0]:g}, {dr[1]:g}]"
    elif bits is not None:
        q = f"uniform dequantization over 2**{bits} levels on [{dr[0]:g}, {dr[1]:g}]"
    else:
        q = "continuous data (no dequantization)"
    est = "exact trace" if args.trace == "exact" else f"Hutchinson, {args.probes} probe(s)"
    mean, se = float(res.mean_bpd), float(res.stderr_bpd)
    nfe = sum(r.nfe for r in res.rows) / max(1, n)
    st = getattr(res, "settings", None) or {}
    warp = f", time warp {args.time_warp:g}" if args.time_warp is not None else ""
    lines = [f"{model.spec} on {what}: {n} samples, {q}, {est}, {_tolerances(args, st)}{warp}"]
    if res.failed:
        shown = ", ".join(f"{i} ({s})" for i, s in res.failed[:5])
        lines.append(f"{len(res.failed)} sample(s) failed and are left out of the mean: {shown}"
                     f"{' ...' if len(res.failed) > 5 else ''}")
    if res.resumed:
        lines.append(f"{res.resumed} row(s) read back from a previous run of the same settings")
    ok = sorted(r.bpd for r in res.rows if r.status == "SUCCESS")
    med = (ok[(len(ok) - 1) // 2] + ok[len(ok) // 2]) / 2 if ok else float("nan")
    lines.append(f"mean bits/dim {mean:.4f} +- {se:.4f} (standard error over {res.succeeded} samples); "
                 f"median {med:.4f}; mean NLL {res.mean_nats:.3f} nats; mean NFE {nfe:.0f}; {seconds:.1f} s")
    lines.append(_error_line(res.rows))
    lines.append(_nll_note(model, levels, bits, dr))
    return "\n".join(lines)


def _tolerances(args, settings: dict) -> str:
    """The tolerances the rows were computed with (resolved by the library: ``rtol``/``atol`` default to
    ``bpd_tol``) and the integration variable where it is not ``t``."""
    def num(name):
        v = getattr(args, name, None)
        v = settings.get(name) if v is None else v
        return f"{v:g}" if isinstance(v, (int, float)) else "default"

    time = settings.get("time")
    var = f", time={time!r}" if time not in (None, "t") else ""
    return f"bpd_tol={num('bpd_tol')}, RK45 rtol={num('rtol')} atol={num('atol')}{var}"


def _error_line(rows) -> str:
    """The solver's error estimate beside the bits/dim: max and median of ``solver_error_bpd`` over the rows
    computed in this run, and what it promises (the result's ``stats["guarantee"]``) where the result says."""
    ok = [r for r in rows if r.status == "SUCCESS"]
    errs = sorted(r.solver_error_bpd for r in ok if math.isfinite(getattr(r, "solver_error_bpd", math.nan)))
    if not errs:
        what = "the rows were read back from a previous run" if ok else "no sample succeeded"
        return f"solver error estimate: none ({what})"
    med = (errs[(len(errs) - 1) // 2] + errs[len(errs) // 2]) / 2
    line = (f"solver error estimate (solver_error_bpd): max {errs[-1]:.2g}, median {med:.2g} bits/dim over "
            f"{len(errs)} samples")
    if len(errs) < len(ok):
        line += f" ({len(ok) - len(errs)} row(s) read back carry none)"
    g = next((r.guarantee for r in ok if getattr(r, "guarantee", "")), "")
    return line + (f"; guarantee: {g}" if g else "")


def _nll_note(model, levels, bits, dr) -> str:
    """What the NLL in nats is (it can be negative: a density, not a probability)."""
    d = math.prod(model.event_shape)
    if levels is None and bits is None:
        return (f"(NLL: -log of the model's continuous density at each sample, summed over its {d} dims, in "
                f"nats; bits/dim = NLL / ({d} ln 2))")
    L = levels if levels is not None else 2 ** bits
    width = (dr[1] - dr[0]) / (L - 1)
    return (f"(NLL: -log of the model's continuous density of the dequantized sample on [{dr[0]:g}, {dr[1]:g}], "
            f"summed over its {d} dims, in nats; negative where the density exceeds 1. bits/dim = NLL / ({d} ln 2) "
            f"- log2 of the bin width {width:.4g}, i.e. + {-math.log2(width):.4g}: the discrete data's bits)")
