"""Negative log-likelihood of a data set: one row per sample, resumable, torch.distributed aware.

:func:`dataset_nll` runs :meth:`flowsde.adapters.Diffusion.log_likelihood` over a data set
in batches and returns (and writes, with ``out=``) one row per sample::

    index,nats,bpd,stderr,nfe,status

* ``index``: the sample's global index in the data set (``0 .. n-1``);
* ``nats``: ``-log p(y)``, the negative log-density (nats) of the sample ``y`` as the model
  sees it (dequantized and scaled to ``data_range`` for discrete data);
* ``bpd``: bits per dimension of the discrete data (``levels`` or ``bits`` given, the
  dequantization bound of :func:`flowsde.bits_per_dim`), or ``nats / (D ln 2)`` for
  continuous data;
* ``stderr``: standard error of ``nats`` over the Hutchinson probes (``probes >= 2``); ``nan``
  where not estimated (exact trace, one probe);
* ``nfe``: evaluations of the network the sample took (the likelihood's
  ``stats["nfe_per_sample"]``: its own count with ``per_sample=True``, the batch's with
  batch-shared steps);
* ``status``: :class:`flowsde.Status` name (``SUCCESS``, ``NON_FINITE``, ...). A sample that did not
  succeed has ``nan`` for ``nats``, ``bpd`` and ``stderr`` (its partial integral is not an answer);
  ``nfe`` is what it took before it failed.

Reproducibility (``docs/nll.md``):

* each sample draws its dequantization noise and its probes from its own generator,
  seeded by :func:`sample_seeds` from ``(seed, index)`` alone;
* batches are formed from global indices — batch ``b`` holds ``b*batch_size .. (b+1)*batch_size-1``
  — whatever the number of processes, so a batch holds the same samples on any world size
  (the batch-shared RK45 step couples the samples of a batch; with ``per_sample=True``,
  the default here, a sample's result depends on the sample alone, and the rows do not
  depend on ``batch_size`` either, up to the rounding of the network's batched arithmetic);
* floats are written with ``repr`` (shortest round trip), so a row read back from a file
  is bit-identical to the one computed.

torch.distributed: when a process group is initialised (``torchrun``), the batches not yet
done are dealt round-robin to the ranks (pending batch ``j`` to rank ``j % world``). Ranks
meet only at the start (one ``all_gather_object`` of the rows already on disk and of input
errors) and at the end (``gather_object`` of the new rows and failures to rank 0, then
``broadcast_object_list`` of the result), never inside a solve: an adaptive solver takes a
different number of steps on each rank (k-diffusion's likelihood hangs under DDP for that
reason, its issue #79).

Resume: with ``out=FILE.csv`` every rank appends each finished batch's rows to
``FILE.csv.parts/rank{r}-of-{w}.csv`` (flushed and fsynced per batch); ``FILE.csv`` itself
is written once, by rank 0, when every sample has a row, with a ``FILE.csv.json`` summary,
and the parts folder is then removed. A rerun with the same settings (any world size)
reads the rows already on disk (part files and a finished ``FILE.csv``), computes only the
batches that miss a row, and writes the same final file. A torn last line (a kill
mid-write) is not a valid row (its status is cut) and is ignored. Everything that defines the
rows is stored in ``FILE.csv.parts/meta.json`` (and in the summary) and checked by a rerun,
which refuses a difference by name (:class:`flowsde.InputError`):

* the run's settings (``n``, ``batch_size``, ``seed``, dtype and the likelihood's options,
  stored *resolved*: the likelihood's defaults applied, so ``time_warp=None`` and ``1.5``, or
  ``bits=8`` and ``levels=256``, are one setting);
* the model: a sha256 of the network's parameters and buffers (every ``nn.Module`` and tensor
  the ``net`` holds, through closures, the module-level objects it calls and ``functools.partial``),
  its name, the schedule and the
  prediction. A plain callable holding no tensor cannot be verified: only its name is compared
  (a warning says so on resume);
* the data: shape and dtype of the rows evaluated, and a sha256 of each batch's rows (checked for
  the batches whose rows are read back; an unreadable record is no mismatch until it is read);
* the finished file: a sha256 of ``FILE.csv``'s bytes in the summary, so a hand-edited or damaged
  row of a finished file is refused. Rows in the part files of an unfinished run carry no checksum.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import types
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import flowsde
from flowsde import FlowSDEError, InputError, Status
from flowsde._internal import as_seed

__all__ = ["dataset_nll", "NLLResult", "NLLRow", "NLLError", "sample_seeds", "HEADER"]

#: the CSV header of :func:`dataset_nll`'s output
HEADER = "index,nats,bpd,stderr,nfe,status"
_STATUS_NAMES = frozenset(s.name for s in Status)
_log = logging.getLogger("flowsde.nll")
#: timeout of the process group that dataset_nll starts itself under torchrun: a rank that finishes
#: early waits for the slowest at the final gather
INIT_TIMEOUT = timedelta(hours=6)
_FORMAT = 2  # bump when the meaning of a row changes (old part files are then refused); 2: NaN for failed samples,
# the model's and the data's identity, resolved likelihood options


class NLLError(FlowSDEError, RuntimeError):
    """Some batches of :func:`dataset_nll` raised; the other samples' rows are kept on disk.

    Attributes:
        failures: list of ``(rank, indices, message)``, one per failed batch.
    """

    def __init__(self, message: str, failures: List[Tuple[int, List[int], str]]):
        super().__init__(message)
        self.failures = failures


@dataclass(frozen=True, eq=False)
class NLLRow:
    """One sample's result (see the module docstring for the columns).

    A sample whose solve did not succeed (``status`` other than ``SUCCESS``) has ``nats``, ``bpd`` and
    ``stderr`` NaN: its status says why, and no partial value passes for an answer. The CSV writes them
    ``nan`` and reads them back as NaN. Two rows are equal when their CSV lines are (floats compared bit
    for bit by their ``repr``, so a NaN equals a NaN).
    """

    index: int
    nats: float
    bpd: float
    stderr: float
    nfe: int
    status: str
    #: the likelihood's error estimate of this row (``solver_error_bpd``; bits/dim); not a CSV column, so NaN
    #: for a row read back from a file (and two rows compare equal whatever it is)
    solver_error_bpd: float = math.nan
    #: what that estimate promises (the result's ``stats["guarantee"]``, ``""`` where it has none); not in the CSV
    guarantee: str = ""

    def __eq__(self, other) -> bool:
        return self.line() == other.line() if isinstance(other, NLLRow) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.line())

    def line(self) -> str:
        """The CSV line (no newline); floats as ``repr`` so they read back bit-identical."""
        return f"{self.index},{self.nats!r},{self.bpd!r},{self.stderr!r},{self.nfe},{self.status}"

    @staticmethod
    def parse(line: str) -> Optional["NLLRow"]:
        """The row of a CSV line, or ``None`` for a header, a blank or a torn (incomplete) line."""
        parts = line.strip().split(",")
        if len(parts) != 6 or parts[5] not in _STATUS_NAMES:
            return None
        try:
            return NLLRow(int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3]), int(parts[4]), parts[5])
        except ValueError:
            return None


@dataclass
class NLLResult:
    """What :func:`dataset_nll` returns (the same object on every rank).

    Attributes:
        rows: one :class:`NLLRow` per sample, sorted by index (NaN numbers for a failed sample).
        mean_bpd: mean bits/dim over the samples with status ``SUCCESS``.
        stderr_bpd: its standard error over samples, ``std(bpd) / sqrt(succeeded)`` (``nan`` if ``succeeded < 2``).
        mean_nats, stderr_nats: the same for the NLL in nats.
        samples: number of samples evaluated (after ``limit``); ``succeeded``: those with ``SUCCESS``.
        failed: ``(index, status)`` of the samples whose solve did not succeed.
        resumed: samples read from a previous run instead of computed (those of the batches
            complete on disk; a batch with a missing row is computed again).
        world_size: processes that took part.
        out: the CSV written (``None`` without ``out=``).
        settings: the settings that define the rows (stored with the file for resumes).
    """

    rows: List[NLLRow]
    mean_bpd: float
    stderr_bpd: float
    mean_nats: float
    stderr_nats: float
    samples: int
    succeeded: int
    failed: List[Tuple[int, str]]
    resumed: int
    world_size: int
    out: Optional[Path]
    settings: dict = field(default_factory=dict)

    @property
    def stderr(self) -> float:
        """``stderr_bpd``: the standard error of ``mean_bpd`` over samples."""
        return self.stderr_bpd

    def summary(self) -> str:
        """One line: mean bits/dim and its standard error over samples."""
        s = (f"bits/dim {self.mean_bpd:.4f} +- {self.stderr_bpd:.4f} (mean +- standard error over "
             f"{self.succeeded} samples); NLL {self.mean_nats:.4f} +- {self.stderr_nats:.4f} nats")
        if self.failed:
            s += f"; {len(self.failed)} sample(s) failed and are excluded: " + _describe_failed(self.failed)
        return s

    def __repr__(self) -> str:
        return (f"NLLResult(samples={self.samples}, succeeded={self.succeeded}, mean_bpd={self.mean_bpd:.6g}, "
                f"stderr_bpd={self.stderr_bpd:.3g})")


# -- seeds ---------------------------------------------------------------------------------------

def _mix32(x: int) -> int:
    """A bijective 32-bit integer hash (Wellons' lowbias32 finaliser)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def sample_seeds(seed: int, indices: Sequence[int]) -> List[int]:
    """The generator seed of each sample: ``(mix32(seed) + index) mod 2^32``.

    Distinct for distinct indices of one run (up to 2^32 samples); a function of ``seed`` and
    the index alone, so a sample's dequantization noise and probes do not depend on its
    batch, its rank or the world size. 32 bits because torch's CPU generator (mt19937) uses
    only the low 32 bits of a seed.
    """
    base = _mix32(int(seed) ^ 0x5EED5EED)
    return [(base + int(i)) & 0xFFFFFFFF for i in indices]


# -- input ---------------------------------------------------------------------------------------

def _check_int(name: str, v, lo: int = 1, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise InputError(f"dataset_nll: {name} must be an int >= {lo}, got {v!r}.")


def _length(data) -> int:
    if isinstance(data, torch.Tensor):
        if data.dim() < 2:
            raise InputError(f"dataset_nll: data must be (N, *event_shape) with an event dimension, got shape "
                             f"{tuple(data.shape)}; add one, e.g. data[:, None].")
        return data.shape[0]
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise InputError(f"dataset_nll: data must be a tensor (N, *event_shape) or a map-style torch Dataset "
                         f"(with __len__ and __getitem__), got {type(data).__name__}.")
    return len(data)


def _item(data, i: int) -> torch.Tensor:
    x = data[i]
    if isinstance(x, (tuple, list)):  # (x, label) datasets
        x = x[0]
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"dataset_nll: data[{i}] is a {type(x).__name__}, not a tensor ({e}); the Dataset "
                             "must return a tensor or a (tensor, label) pair.") from e
    return x


def _batch(data, idx: List[int], device, dtype) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        x = data[idx[0]:idx[-1] + 1]
    else:
        x = torch.stack([_item(data, i) for i in idx])
    return x.to(device=device, dtype=dtype)


def _net_param(diffusion):
    net = getattr(diffusion, "net", None)
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p
    return None


# -- identity of the model and the data (stored with the rows, checked on resume) ----------------

_WALK_DEPTH = 6
_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _tensor_bytes(h, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes (as on the CPU, row-major) to the hash ``h``."""
    t = t.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel() == 0:
        return
    flat = t.reshape(-1)
    step = max(1, (64 << 20) // max(1, t.element_size()))  # 64 MiB at a time off a device
    for k in range(0, flat.numel(), step):
        chunk = flat[k:k + step].to("cpu").contiguous()
        h.update(chunk.view(torch.uint8).numpy().tobytes() if chunk.dtype != torch.uint8 else chunk.numpy().tobytes())


class _Walk:
    """The tensors (modules' parameters and buffers, tensors) and plain values a callable holds: through
    ``nn.Module``s, closures, ``functools.partial``, bound methods, containers and public attributes of
    plain objects. ``tensors`` counts what was hashed into ``h`` besides names and scalars."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.tensors = 0
        self.seen = set()

    def add(self, path: str, v, depth: int = 0) -> None:
        h = self.h
        if isinstance(v, _SCALARS) or isinstance(v, (torch.dtype, torch.device)):
            h.update(f"{path}={v!r};".encode())
            return
        if id(v) in self.seen or depth > _WALK_DEPTH or isinstance(v, (type, types.ModuleType)):
            return
        self.seen.add(id(v))
        if isinstance(v, torch.Tensor):
            h.update(f"{path}:tensor;".encode())
            _tensor_bytes(h, v)
            self.tensors += 1
        elif isinstance(v, torch.nn.Module):
            h.update(f"{path}:{type(v).__module__}.{type(v).__qualname__};".encode())
            named = dict(v.named_parameters())
            named.update(v.named_buffers())
            for name in sorted(named):
                h.update(f"{path}.{name};".encode())
                _tensor_bytes(h, named[name])
                self.tensors += 1
        elif isinstance(v, functools.partial):
            self.add(path + ".func", v.func, depth + 1)
            self.add(path + ".args", list(v.args), depth + 1)
            self.add(path + ".keywords", dict(v.keywords), depth + 1)
        elif isinstance(v, types.MethodType):
            self.add(path + ".__func__", v.__func__, depth + 1)
            self.add(path + ".__self__", v.__self__, depth + 1)
        elif isinstance(v, types.FunctionType):
            h.update(f"{path}:{v.__qualname__};".encode())  # not its module: __main__ when run as a script
            for name, cell in zip(v.__code__.co_freevars, v.__closure__ or ()):
                try:
                    self.add(f"{path}.<{name}>", cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass
            if hasattr(v, "__wrapped__"):
                self.add(path + ".__wrapped__", v.__wrapped__, depth + 1)
            g = getattr(v, "__globals__", {})
            for name in sorted(set(v.__code__.co_names)):  # the module-level objects it uses (`model(x, t)`)
                if name in g and not isinstance(g[name], (type, types.ModuleType)):
                    self.add(f"{path}.<global {name}>", g[name], depth + 1)
        elif isinstance(v, (list, tuple)):
            for k, u in enumerate(v):
                self.add(f"{path}[{k}]", u, depth + 1)
        elif isinstance(v, dict):
            for k in sorted(v, key=repr):
                self.add(f"{path}[{k!r}]", v[k], depth + 1)
        else:  # a plain object: its type and public attributes (no repr: it may hold an address)
            h.update(f"{path}:{type(v).__module__}.{type(v).__qualname__};".encode())
            attrs = getattr(v, "__dict__", None)
            if isinstance(attrs, dict):
                for k in sorted(a for a in attrs if isinstance(a, str) and not a.startswith("_")):
                    self.add(f"{path}.{k}", attrs[k], depth + 1)


def _callable_name(f) -> str:
    if isinstance(f, torch.nn.Module):
        return f"{type(f).__module__}.{type(f).__qualname__}"
    if isinstance(f, (types.FunctionType, types.MethodType, functools.partial)):
        return getattr(f, "__qualname__", None) or repr(f)  # not its module: __main__ when run as a script
    return f"{type(f).__module__}.{type(f).__qualname__}"


def _model_identity(diffusion) -> dict:
    """What identifies the model: the network's name and a sha256 of the tensors it holds, the schedule, the
    prediction (stored with the rows; a resume compares them)."""
    net = getattr(diffusion, "net", diffusion)
    w = _Walk()
    w.add("net", net)
    weights = (f"sha256:{w.h.hexdigest()}" if w.tensors else
               "unverifiable (a plain callable holding no tensor: compared by its name only)")
    sched = getattr(diffusion, "schedule", None)
    sw = _Walk()
    sw.add("schedule", sched)
    text = repr(sched)
    text = text if len(text) <= 200 else text[:200] + "..."
    if sw.tensors:
        text += f" [its tensors: sha256:{sw.h.hexdigest()}]"
    return dict(model=_callable_name(net), model_weights=weights, schedule=text,
                prediction=_jsonable(getattr(diffusion, "prediction", None)))


def _data_identity(data, n: int, batch_size: int) -> Tuple[str, List[Optional[str]]]:
    """``(dtype, per-batch sha256)`` of the rows evaluated (the first ``n``), batch ``b`` holding the rows
    ``b*batch_size ..``; ``None`` for a batch with a record that cannot be read (its batch reports it)."""
    digests: List[Optional[str]] = []
    dtype = None
    for b in range(-(-n // batch_size)):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        h = hashlib.sha256()
        try:
            rows = data[lo:hi] if isinstance(data, torch.Tensor) else [_item(data, i) for i in range(lo, hi)]
            for x in rows:
                dtype = dtype or str(x.dtype)
                _tensor_bytes(h, x)
        except Exception:  # noqa: BLE001 - a corrupt record: the batch's evaluation reports it
            digests.append(None)
            continue
        digests.append(h.hexdigest()[:32])  # 128 bits a batch
    return dtype or "unknown", digests


def _resolved_options(diffusion, lik_kw: dict, dtype: torch.dtype, D: int) -> dict:
    """The likelihood's options with its defaults applied (``None`` resolved to what it means for this
    model, dtype and dimension), so that two spellings of one setting compare equal."""
    kw = dict(lik_kw)
    skip = {"x", "generator", "throw", "progress", "exact_max_bytes", "diffusion"}
    try:
        params = inspect.signature(diffusion.log_likelihood).parameters.values()
    except (TypeError, ValueError):
        params = ()
    for p in params:
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in skip and p.default is not p.empty:
            kw.setdefault(p.name, p.default)
    if getattr(diffusion, "schedule", None) is None or not hasattr(diffusion, "pf_ode"):
        return kw  # not a flowsde Diffusion: its options as given, defaults filled from its signature
    from flowsde.adapters import likelihood_settings

    try:
        kw = likelihood_settings(diffusion, dtype, D, **kw)
    except (InputError, TypeError, ValueError):
        pass  # the likelihood refuses these options itself, with its own message, on the first batch
    return kw


# -- distributed ---------------------------------------------------------------------------------

def _process_group():
    """``(torch.distributed, rank, world)`` when a process group is initialised, else ``(None, 0, 1)``."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        return td, td.get_rank(), td.get_world_size()
    return None, 0, 1


def _all_gather(td, world, obj):
    if td is None:
        return [obj]
    got = [None] * world
    td.all_gather_object(got, obj)
    return got


def _gather(td, rank, world, obj):
    if td is None:
        return [obj]
    got = [None] * world if rank == 0 else None
    td.gather_object(obj, got, dst=0)
    return got


def _broadcast(td, obj):
    if td is None:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


# -- files ---------------------------------------------------------------------------------------

def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _read_rows(path: Path) -> List[NLLRow]:
    rows = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            r = NLLRow.parse(line)
            if r is not None:
                rows.append(r)
    return rows


#: how a difference in a stored setting is named in a refusal
_LABELS = dict(model_weights="model weights", model="model (its network)", data_shape="data shape",
               data_dtype="data dtype")


def _shown(v) -> str:
    """A stored value as a refusal shows it (a sha256 shortened)."""
    if isinstance(v, str) and v.startswith("sha256:"):
        return f"sha256 {v[7:19]}..."
    return repr(v)


def _diff(a: dict, b: dict) -> str:
    if a.get("format") != b.get("format"):  # another version's file: its keys differ, name only that
        return f"a file of format {a.get('format')!r} there vs {b.get('format')!r} now"
    keys = sorted((set(a) | set(b)) - {"data_sha256"})
    return ", ".join(f"{_LABELS.get(k, k)}: {_shown(a.get(k))} there vs {_shown(b.get(k))} now"
                     for k in keys if a.get(k) != b.get(k))


def _data_diff(old, new, on_disk: set, batch_size: int) -> str:
    """The batches whose rows are on disk and whose data differ (or cannot be read now to be compared)."""
    if not isinstance(old, list) or len(old) != len(new):
        return "data: no per-batch sha256 there" if not isinstance(old, list) else ""  # n differs: said already
    bad = [b for b in sorted(on_disk) if b < len(new) and (new[b] is None or old[b] != new[b])]
    if not bad:
        return ""
    b = bad[0]
    rows = f"{b * batch_size}-{(b + 1) * batch_size - 1}"
    now = "unreadable" if new[b] is None else f"sha256 {new[b][:12]}..."
    then = "unreadable" if old[b] is None else f"sha256 {old[b][:12]}..."
    more = f" (and {len(bad) - 1} more batch(es))" if len(bad) > 1 else ""
    return f"data rows {rows}: {then} there vs {now} now{more}"


def _previous_rows(out: Path, settings: dict) -> List[NLLRow]:
    """Rows already on disk for ``out`` (its part files and a finished file), checked against ``settings``
    (the model, the data of the batches read back, the finished file's checksum)."""
    parts, summ = _parts_dir(out), _summary_path(out)
    metas = []
    for meta_path in (parts / "meta.json", summ):
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InputError(f"dataset_nll: cannot read {meta_path} ({e}); delete it (and {parts}) to start "
                                 "over.") from e
            metas.append((meta_path, meta if isinstance(meta, dict) else {}))
    rows: List[NLLRow] = []
    if out.exists():
        if not summ.exists():
            raise InputError(f"dataset_nll: {out} exists but was not written by dataset_nll (no {summ.name} next "
                             "to it); choose another out or delete it.")
        _check_checksum(out, summ, dict(metas).get(summ, {}))
        rows += _read_rows(out)
    if parts.is_dir():
        for p in sorted(parts.glob("rank*.csv")):
            rows += _read_rows(p)
    on_disk = {r.index // settings["batch_size"] for r in rows if 0 <= r.index < settings["n"]}
    for meta_path, meta in metas:
        old = meta.get("settings", {})
        old = old if isinstance(old, dict) else {}
        what = _diff(old, settings) or _data_diff(old.get("data_sha256"), settings["data_sha256"], on_disk,
                                                  settings["batch_size"])
        if what:
            raise InputError(f"dataset_nll: {out} holds results of another run ({what}); rerun with the same "
                             f"model, data and settings to resume, or pass another out (--out) or delete {out}, "
                             f"{summ} and {parts} to start over.")
    if metas and rows and not settings["model_weights"].startswith("sha256:"):
        _log.warning("dataset_nll: %s: resume cannot verify the model: its network %s is a plain callable holding "
                     "no tensor, so only its name is compared; %d row(s) are read back on that basis.", out,
                     settings["model"], len(rows))
    return rows


def _rows_sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _check_checksum(out: Path, summ: Path, summary: dict) -> None:
    """Refuse a finished file whose bytes are not those its summary records (a hand-edited or damaged row)."""
    want = summary.get("rows_sha256")
    got = _rows_sha256(out)
    if want != got:
        raise InputError(f"dataset_nll: {out} is not the file dataset_nll wrote (rows checksum {_shown(want)} in "
                         f"{summ.name} vs {_shown(got)} now): it was edited or damaged; delete {out} and {summ} to "
                         "compute the rows again.")


def _write_atomic(path: Path, text: str, tag: str) -> None:
    tmp = path.with_name(f".{path.name}.{tag}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _PartWriter:
    """Appends finished rows to this rank's part file, one flushed + fsynced write per batch."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.f = open(path, "a", encoding="utf-8")
        if torn:  # a line cut by a kill: end it, so it stays one (ignored) invalid line
            self.f.write("\n")

    def write(self, rows: List[NLLRow]) -> None:
        self.f.write("".join(r.line() + "\n" for r in rows))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# -- statistics ----------------------------------------------------------------------------------

def _mean_se(v: List[float]) -> Tuple[float, float]:
    n = len(v)
    if n == 0:
        return float("nan"), float("nan")
    m = math.fsum(v) / n
    if n < 2:
        return m, float("nan")
    var = math.fsum((x - m) ** 2 for x in v) / (n - 1)
    return m, math.sqrt(var / n)


def _ranges(idx: List[int]) -> str:
    idx = sorted(idx)
    out, start, prev = [], idx[0], idx[0]
    for i in idx[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(out)


def _describe_failed(failed: List[Tuple[int, str]], limit: int = 5) -> str:
    by: Dict[str, List[int]] = {}
    for i, s in failed:
        by.setdefault(s, []).append(i)
    return "; ".join(f"{s} at samples {_ranges(v) if len(v) <= 50 else _ranges(v[:50]) + ',...'}"
                     for s, v in list(by.items())[:limit])


def _jsonable(v):
    """A setting as stored in ``meta.json``: numbers, strings, lists; a callable by its qualified name."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(u) for u in v]
    if isinstance(v, torch.dtype):
        return str(v)
    if callable(v):
        return f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', type(v).__name__)}"
    return repr(v)


# -- the computation -----------------------------------------------------------------------------

def _rows_of(res, idx: List[int], D: int, continuous: bool) -> List[NLLRow]:
    logp = res.logp.detach().to("cpu", torch.float64)
    B = logp.shape[0]
    if getattr(res, "bpd", None) is not None:
        bpd = res.bpd.detach().to("cpu", torch.float64).tolist()
    elif continuous:
        bpd = (-logp / (D * math.log(2))).tolist()
    else:  # pragma: no cover - the adapters always fill bpd when levels/bits are given
        raise FlowSDEError("dataset_nll: the likelihood returned no bpd for discrete data.")
    probes = getattr(res, "logp_probes", None)
    if probes is not None and probes.dim() == 2 and probes.shape[1] >= 2:
        # std over the probes per row, in Python: torch's reduction over a (B, k) tensor rounds
        # differently with B, and a row must not depend on its batch
        stderr = [_mean_se(list(v))[1] for v in probes.detach().to("cpu", torch.float64).tolist()]
    elif res.stderr is not None:
        stderr = res.stderr.detach().to("cpu", torch.float64).tolist()
    else:
        stderr = [math.nan] * B
    per = getattr(res, "nfe_per_sample", None)
    if per is None:
        per = (getattr(res, "stats", None) or {}).get("nfe_per_sample")
    if per is None and isinstance(res.nfe, torch.Tensor) and res.nfe.dim() == 1:
        per = res.nfe
    nfe = per.detach().to("cpu").tolist() if isinstance(per, torch.Tensor) else [int(res.nfe)] * B
    status = [Status(int(s)).name for s in res.status.detach().to("cpu").tolist()]
    nan = math.nan  # a failed sample's numbers are NaN (flowsde's likelihood already gives NaN; any other too)
    err = getattr(res, "solver_error_bpd", None)
    err = err.detach().to("cpu", torch.float64).reshape(-1).tolist() if isinstance(err, torch.Tensor) else [nan] * B
    g = (getattr(res, "stats", None) or {}).get("guarantee")
    g = g if isinstance(g, str) else ""
    return [NLLRow(i, -lp, b, se, int(n), st, e, g) if st == "SUCCESS" else NLLRow(i, nan, nan, nan, int(n), st)
            for i, lp, b, se, n, st, e in zip(idx, logp.tolist(), bpd, stderr, nfe, status, err)]


# 18 parameters: the public call behind `flowsde nll`, one keyword per option of the command (docs/nll.md,
# docs/cli.md); the body hands them on as one _Options.
def dataset_nll(
    diffusion,
    data,
    *,
    levels: Optional[int] = None,
    bits: Optional[int] = None,
    data_range: Optional[Tuple[float, float]] = None,
    trace: str = "exact",
    probes: int = 1,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    batch_size: int = 64,
    generator=0,
    limit: Optional[int] = None,
    out=None,
    progress: bool = False,
    device=None,
    dtype: Optional[torch.dtype] = None,
    per_sample: bool = True,
    **likelihood_options,
) -> NLLResult:
    """Negative log-likelihood and bits/dim of every sample of a data set (see the module docstring).

    Arguments:
        diffusion: a :class:`flowsde.adapters.Diffusion` (anything with its ``log_likelihood``).
        data: a tensor ``(N, *event_shape)`` or a map-style torch Dataset whose items are tensors
            or ``(tensor, label)`` pairs, in the model's data space (on the quantization grid for
            discrete data, as :func:`flowsde.dequantize` expects).
        levels, bits: quantization of discrete data (``levels`` bins, or ``2**bits``); the samples
            are dequantized with their own noise and ``bpd`` is the dequantization bound. Neither:
            continuous data, no dequantization, ``bpd = nats / (D ln 2)``.
        data_range: ``(lo, hi)`` the discrete data were scaled to (the likelihood's default if ``None``).
        trace, probes: as :meth:`Diffusion.log_likelihood`.
        rtol, atol: RK45 tolerances (``None``: :meth:`Diffusion.log_likelihood`'s defaults).
        batch_size: samples per solve; batch ``b`` holds the global indices
            ``b*batch_size .. (b+1)*batch_size - 1``.
        generator: the base seed of the per-sample generators (:func:`sample_seeds`): an int
            >= 0 (default 0), or a ``torch.Generator`` that one seed is drawn from (the same on every
            rank only if every rank seeds it alike).
        limit: evaluate the first ``limit`` samples only.
        out: CSV path (rows written as they finish, resumable; see the module docstring).
        progress: a tqdm bar (stderr, rank 0) over the samples of this rank.
        device, dtype: where and in which dtype to evaluate (default: the network's parameters',
            else the data's device and floating dtype; under ``nccl``, ``cuda:LOCAL_RANK``, where the
            network, if an ``nn.Module`` elsewhere, is moved: each process holds its own copy).
        per_sample: per-sample RK45 error control (default ``True``: a sample's result then does
            not depend on the other samples of its batch, nor on ``batch_size``); ``False``:
            batch-shared steps (rows then depend on ``batch_size``, not on the world size).
        **likelihood_options: passed on to :meth:`Diffusion.log_likelihood` (e.g. ``t_eps``,
            ``max_steps``, ``time``), and stored with the settings.

    torch.distributed: shards when a process group is initialised; under ``torchrun`` without one
    (``WORLD_SIZE > 1``), starts one itself (``nccl`` for a CUDA model or device, else ``gloo``;
    timeout :data:`INIT_TIMEOUT`) and destroys it before returning.

    Returns:
        :class:`NLLResult`, identical on every rank and for any world size.

    Raises:
        InputError: bad arguments, an ``out`` holding rows of other settings, data of a shape the
            model refuses (raised on every rank).
        NLLError: some batches raised (other than a non-finite solve, which is a row with
            its status); every other row is computed and kept in the part files, so a rerun
            retries only the failed batches.
    """
    seed = generator if isinstance(generator, int) and not isinstance(generator, bool) else \
        as_seed(generator, "dataset_nll") % 2**63
    own_group = _init_from_env(diffusion, device)
    try:
        return _dataset_nll(diffusion, data, _Options(
            levels=levels, bits=bits, data_range=data_range, trace=trace, probes=probes, rtol=rtol, atol=atol,
            batch_size=batch_size, seed=seed, limit=limit, out=out, progress=progress, device=device, dtype=dtype,
            per_sample=per_sample, likelihood_options=likelihood_options))
    finally:
        if own_group:
            import torch.distributed as td

            td.destroy_process_group()


def _init_from_env(diffusion, device) -> bool:
    """Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) with no process group yet, start one
    (``nccl`` when evaluating on CUDA, else ``gloo``) so the ranks share the work instead of each
    evaluating everything; returns whether it did (the group is then destroyed at the end)."""
    import torch.distributed as td

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not td.is_available() or td.is_initialized():
        return False
    p = _net_param(diffusion)
    cuda = (device is not None and torch.device(device).type == "cuda") or (
        device is None and p is not None and p.device.type == "cuda")
    td.init_process_group("nccl" if cuda else "gloo", timeout=INIT_TIMEOUT)
    return True


@dataclass(frozen=True)
class _Options:
    """:func:`dataset_nll`'s keyword arguments as given, the base seed resolved (checked by :func:`_job`)."""

    levels: Optional[int]
    bits: Optional[int]
    data_range: Optional[Tuple[float, float]]
    trace: str
    probes: int
    rtol: Optional[float]
    atol: Optional[float]
    batch_size: int
    seed: int
    limit: Optional[int]
    out: object
    progress: bool
    device: object
    dtype: object
    per_sample: bool
    likelihood_options: dict


@dataclass(frozen=True)
class _Job:
    """A checked run, the same on every rank: what is evaluated, where, and the settings that define the rows."""

    diffusion: object
    data: object
    n: int  #: samples evaluated (after ``limit``)
    D: int  #: dimension of one sample
    batch_size: int
    seed: int
    device: torch.device
    dtype: torch.dtype
    lik_kw: dict  #: the keywords of ``diffusion.log_likelihood``
    continuous: bool  #: no dequantization: ``bpd = nats / (D ln 2)``
    settings: dict  #: stored with the file (``meta.json``); a resume with others is refused
    out: Optional[Path]
    progress: bool


def _dataset_nll(diffusion, data, o: _Options) -> NLLResult:
    td, rank, world = _process_group()
    job = _job(diffusion, data, o, td, rank)
    done = _rows_on_disk(job, td, world)  # the one collective before the work
    mine, skipped = _shard(job, done, rank, world)
    new_rows, failures = _work(job, mine, rank, world)  # no collective in here
    # the end: gather to rank 0, which merges and writes once; its outcome is broadcast
    gathered = _gather(td, rank, world, (new_rows, failures))
    outcome = _outcome(job, gathered, done, skipped, world) if rank == 0 else None
    outcome = _broadcast(td, outcome)
    if outcome[0] == "error":
        _, kind, msg, all_failures = outcome
        if kind == "input":
            raise InputError(msg)
        raise NLLError(msg, all_failures)
    return outcome[1]


# -- the run's settings (checked on every rank before any collective) -----------------------------

def _job(diffusion, data, o: _Options, td, rank: int) -> _Job:
    """Check the call (:class:`InputError`), choose the device and dtype, fix the settings of the rows."""
    n, first, event = _check_call(diffusion, data, o)
    device = _device(diffusion, first, o.device, td, rank)
    dtype = _dtype(diffusion, first, o.dtype)
    lik_kw = _likelihood_keywords(o)
    resolved = _resolved_options(diffusion, lik_kw, dtype, math.prod(event))
    data_dtype, data_sha256 = _data_identity(data, n, o.batch_size)
    settings = dict(format=_FORMAT, n=n, event_shape=list(event), batch_size=o.batch_size, seed=o.seed,
                    dtype=str(dtype), **{k: _jsonable(v) for k, v in sorted(resolved.items())},
                    **_model_identity(diffusion), data_shape=[n, *event], data_dtype=data_dtype,
                    data_sha256=data_sha256)
    return _Job(diffusion, data, n, math.prod(event), o.batch_size, o.seed, device, dtype, lik_kw,
                o.levels is None and o.bits is None, settings, _out_path(o.out), o.progress)


def _check_call(diffusion, data, o: _Options) -> Tuple[int, object, Tuple[int, ...]]:
    """``(samples to evaluate, the first sample, its event shape)``, after checking the arguments."""
    if not callable(getattr(diffusion, "log_likelihood", None)):
        raise InputError(f"dataset_nll: expected a flowsde.adapters.Diffusion (with log_likelihood), got "
                         f"{type(diffusion).__name__}.")
    N = _length(data)
    if N < 1:
        raise InputError("dataset_nll: the data set is empty.")
    _check_int("batch_size", o.batch_size)
    _check_int("limit", o.limit, allow_none=True)
    _check_int("generator", o.seed, lo=0)
    _check_int("levels", o.levels, lo=2, allow_none=True)
    _check_int("bits", o.bits, allow_none=True)
    if o.levels is not None and o.bits is not None and o.levels != 2**o.bits:
        raise InputError(f"dataset_nll: levels={o.levels} and bits={o.bits} disagree (levels = 2**bits); give one.")
    if "throw" in o.likelihood_options:
        raise InputError("dataset_nll: throw is set by dataset_nll (throw=False, so that one sample's failure is "
                         "its row's status).")
    if "seed" in o.likelihood_options:
        raise TypeError("dataset_nll() got an unexpected keyword argument 'seed' (the base seed is generator=).")
    n = N if o.limit is None else min(o.limit, N)
    first = _item(data, 0) if not isinstance(data, torch.Tensor) else data[0]
    event = tuple(first.shape)
    if len(event) == 0:
        raise InputError("dataset_nll: samples must have an event dimension (data of shape (N, *event_shape)).")
    return n, first, event


def _device(diffusion, first, device, td, rank: int) -> torch.device:
    """Where to evaluate: ``device``; else, under ``nccl``, ``cuda:LOCAL_RANK`` (the network, an ``nn.Module``
    elsewhere, is moved there: each process holds its own copy); else the network's, else the data's."""
    nccl = td is not None and td.get_backend() == "nccl"
    p = _net_param(diffusion)
    if device is None and nccl:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1))))
        torch.cuda.set_device(device)
        if p is not None and p.device != device:
            diffusion.net.to(device)
    elif device is None and p is not None:
        device = p.device
    elif device is None:
        device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if nccl and device.type == "cuda":
        torch.cuda.set_device(device)  # nccl's object collectives run on the current device
    return device


def _dtype(diffusion, first, dtype) -> torch.dtype:
    """The dtype to evaluate in: ``dtype`` (a name such as ``"float32"`` too); else the network's parameters',
    else the data's floating dtype, else torch's default."""
    if isinstance(dtype, str):
        name = dtype[len("torch."):] if dtype.startswith("torch.") else dtype
        dtype = getattr(torch, name, None) if name in ("float16", "bfloat16", "float32", "float64") else dtype
    p = _net_param(diffusion)
    if dtype is None:
        if p is not None and p.dtype.is_floating_point:
            dtype = p.dtype
        elif isinstance(first, torch.Tensor) and first.dtype.is_floating_point:
            dtype = first.dtype
        else:
            dtype = torch.get_default_dtype()
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dataset_nll: dtype must be a floating torch.dtype, got {dtype!r}.")
    return dtype


def _likelihood_keywords(o: _Options) -> dict:
    """The keywords of ``diffusion.log_likelihood`` (besides ``generator`` and ``throw``)."""
    lik_kw = dict(trace=o.trace, probes=o.probes, per_sample=o.per_sample, **o.likelihood_options)
    if o.rtol is not None:
        lik_kw["rtol"] = o.rtol
    if o.atol is not None:
        lik_kw["atol"] = o.atol
    if o.levels is not None:
        lik_kw["levels"] = o.levels
    if o.bits is not None:
        lik_kw["bits"] = o.bits
    if o.data_range is not None:
        lik_kw["data_range"] = tuple(float(v) for v in o.data_range)
    return lik_kw


def _out_path(out) -> Optional[Path]:
    """``out`` as a path, checked: a file in a writable folder (``None``: no file)."""
    if out is None:
        return None
    out_path = Path(out)
    if out_path.is_dir():
        raise InputError(f"dataset_nll: out={str(out_path)!r} is a directory; give a file path such as "
                         f"{out_path / 'nll.csv'}.")
    if not out_path.parent.is_dir():
        raise InputError(f"dataset_nll: the folder of out={str(out_path)!r} does not exist; create "
                         f"{out_path.parent} first.")
    if not os.access(out_path.parent, os.W_OK):
        raise InputError(f"dataset_nll: cannot write to {out_path.parent} (out={str(out_path)!r}); choose a "
                         "writable folder.")
    return out_path


# -- the start: rows already on disk, the batches not done dealt to the ranks ----------------------

def _rows_on_disk(job: _Job, td, world: int) -> Dict[int, NLLRow]:
    """The rows of every rank's files (one ``all_gather_object``), by index; a settings mismatch or an
    unreadable file seen by any rank is raised on every rank."""
    local_rows, err = [], None
    if job.out is not None:
        try:
            local_rows = _previous_rows(job.out, job.settings)
        except InputError as e:
            err = str(e)
    gathered = _all_gather(td, world, (local_rows, err))
    errs = [e for _, e in gathered if e]
    if errs:
        raise InputError(errs[0])
    done: Dict[int, NLLRow] = {}
    for rows, _ in gathered:
        for r in rows:
            if 0 <= r.index < job.n:
                done.setdefault(r.index, r)
    return done


def _shard(job: _Job, done: Dict[int, NLLRow], rank: int, world: int) -> Tuple[List[List[int]], int]:
    """``(this rank's batches, samples resumed)``: batch ``b`` holds the global indices
    ``b*batch_size .. (b+1)*batch_size - 1``; those that miss a row are pending, pending batch ``j`` is
    rank ``j % world``'s."""
    n, size = job.n, job.batch_size
    batches = [list(range(b * size, min((b + 1) * size, n))) for b in range(-(-n // size))]
    pending = [idx for idx in batches if any(i not in done for i in idx)]
    return pending[rank::world], n - sum(len(idx) for idx in pending)


# -- the work: this rank's batches, no collective in here --------------------------------------

def _work(job: _Job, mine: List[List[int]], rank: int, world: int
          ) -> Tuple[List[NLLRow], List[Tuple[int, List[int], str]]]:
    """``(rows, failures)`` of this rank's batches; with ``out``, each batch's rows are appended to the
    rank's part file as it finishes."""
    writer = _part_writer(job, rank, world) if job.out is not None and mine else None
    bar = None
    if job.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(idx) for idx in mine), desc=f"flowsde nll (rank 0 of {world})",
                   unit="sample", file=sys.stderr)
    try:
        return _run_batches(job, mine, rank, world, writer, bar)
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()


def _part_writer(job: _Job, rank: int, world: int) -> _PartWriter:
    """This rank's part file (the settings written beside it first, by whichever rank comes first)."""
    parts = _parts_dir(job.out)
    parts.mkdir(exist_ok=True)
    meta = parts / "meta.json"
    if not meta.exists():
        _write_atomic(meta, json.dumps({"settings": job.settings}, indent=1, sort_keys=True), f"r{rank}")
    return _PartWriter(parts / f"rank{rank}-of-{world}.csv")


def _run_batches(job: _Job, mine: List[List[int]], rank: int, world: int, writer, bar
                 ) -> Tuple[List[NLLRow], List[Tuple[int, List[int], str]]]:
    new_rows: List[NLLRow] = []
    failures: List[Tuple[int, List[int], str]] = []
    for j, idx in enumerate(mine):
        try:
            rows = _evaluate(job, idx)
        except Exception as e:  # noqa: BLE001 - reported with the samples, the other ranks go on
            failures += _failure(e, idx, mine[j + 1:], rank, world)
            if isinstance(e, InputError):  # bad input: every later batch would fail the same way
                break
            continue
        _warn_statuses(rows, rank, world)
        if writer is not None:
            writer.write(rows)
        new_rows += rows
        if bar is not None:
            bar.update(len(idx))
    return new_rows, failures


def _evaluate(job: _Job, idx: List[int]) -> List[NLLRow]:
    """The rows of one batch: each sample with its own generator (:func:`sample_seeds`)."""
    x = _batch(job.data, idx, job.device, job.dtype)
    gens = flowsde.per_sample_generators(sample_seeds(job.seed, idx), device=job.device)
    res = job.diffusion.log_likelihood(x, generator=gens, throw=False, **job.lik_kw)
    return _rows_of(res, idx, job.D, job.continuous)


def _failure(e: Exception, idx: List[int], later: List[List[int]], rank: int, world: int
             ) -> List[Tuple[int, List[int], str]]:
    """The failure of a batch (logged); after an :class:`InputError`, also this rank's later batches, not run."""
    failures = [(rank, idx, f"{type(e).__name__}: {e}")]
    _log.error("dataset_nll: rank %d of %d, samples %s: %s: %s", rank, world, _ranges(idx), type(e).__name__, e)
    rest = [i for b in later for i in b] if isinstance(e, InputError) else []
    if rest:
        failures.append((rank, rest, f"not run: rank {rank} stopped after the InputError above"))
    return failures


def _warn_statuses(rows: List[NLLRow], rank: int, world: int) -> None:
    """A sample whose solve did not succeed is a row with its status, not an exception: reported now (and in
    the summary)."""
    bad = [r for r in rows if r.status != "SUCCESS"]
    for st in sorted({r.status for r in bad}):
        _log.warning("dataset_nll: rank %d of %d, samples %s: %s (%s)", rank, world,
                     _ranges([r.index for r in bad if r.status == st]), st, Status[st].message)


# -- the end: rank 0 merges, writes once --------------------------------------------------------

def _outcome(job: _Job, gathered, done: Dict[int, NLLRow], skipped: int, world: int) -> tuple:
    """Rank 0: ``("ok", NLLResult)`` (the final files written), or ``("error", kind, message, failures)``
    where ``kind`` is ``"input"`` (raised as :class:`InputError`) or ``"run"`` (:class:`NLLError`)."""
    all_failures = [f for _, fs in gathered for f in fs]
    for rows, _ in gathered:
        for r in rows:
            done.setdefault(r.index, r)
    if all_failures:
        return _error_outcome(job, all_failures)
    rows = [done[i] for i in range(job.n)]
    ok = [r for r in rows if r.status == "SUCCESS"]
    mb, sb = _mean_se([r.bpd for r in ok])
    mn, sn = _mean_se([r.nats for r in ok])
    result = NLLResult(rows=rows, mean_bpd=mb, stderr_bpd=sb, mean_nats=mn, stderr_nats=sn, samples=job.n,
                       succeeded=len(ok), failed=[(r.index, r.status) for r in rows if r.status != "SUCCESS"],
                       resumed=skipped, world_size=world, out=job.out, settings=job.settings)
    if job.out is not None:
        _write_final(job.out, result)
    return "ok", result


def _error_outcome(job: _Job, all_failures: List[Tuple[int, List[int], str]]) -> tuple:
    bad = sorted(i for _, idx, _ in all_failures for i in idx)
    first_msg = all_failures[0][2]
    where = "; ".join(f"rank {rk}, samples {_ranges(idx)}: {msg}" for rk, idx, msg in all_failures[:5])
    keep = f" Finished rows are kept in {_parts_dir(job.out)}; rerun to compute only the failed ones." \
        if job.out is not None else ""
    msg = f"dataset_nll: {len(bad)} of {job.n} samples not evaluated ({where}).{keep}"
    kind = "input" if all(isinstance(m, str) and (m.startswith("InputError") or m.startswith("not run"))
                          for _, _, m in all_failures) else "run"
    return "error", kind, msg if kind == "run" else first_msg.split(": ", 1)[1] + keep, all_failures


def _write_final(out: Path, result: NLLResult) -> None:
    """The final CSV and its JSON summary (each written atomically), then the part files removed."""
    text = HEADER + "\n" + "".join(r.line() + "\n" for r in result.rows)
    _write_atomic(out, text, "r0")
    summary = dict(settings=result.settings, n=result.samples, n_ok=result.succeeded, mean_bpd=result.mean_bpd,
                   stderr_bpd=result.stderr_bpd, mean_nats=result.mean_nats, stderr_nats=result.stderr_nats,
                   failed=[list(f) for f in result.failed],
                   rows_sha256="sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest())
    _write_atomic(_summary_path(out), json.dumps(summary, indent=1, sort_keys=True), "r0")
    shutil.rmtree(_parts_dir(out), ignore_errors=True)
