"""flowsde.workloads.dataset_nll: per-sample rows against the exact mixture density, independence
of the batch size and of the number of processes (torch.distributed, gloo, started here through
``python -m torch.distributed.run --standalone``, which picks a free port), resume after a kill
(same and different world size), failure reports.

Model: the exact Gaussian-mixture oracle (4 dims, VP, eps) of ``_nll_worker.py``; every run takes
seconds. "Identical" means byte-identical files: floats are written with ``repr``.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import flowsde
from flowsde import InputError
from flowsde.workloads import NLLError, NLLRow, dataset_nll
from flowsde.workloads import sample_seeds

HEADER = "index,nats,bpd,stderr,nfe,status"  # the file format of docs/nll.md

import _nll_worker as W

WORKER = str(Path(__file__).with_name("_nll_worker.py"))
DT = torch.float64
# the worker's defaults: Hutchinson with 2 probes (a stderr per sample), batch-shared steps (the
# samples of a batch are coupled, so only batches formed from global indices give equal rows)
DEFAULTS = dict(bits=W.BITS, batch_size=4, generator=0, trace="hutchinson", probes=2, per_sample=False,
                bpd_tol=W.BPD_TOL)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    return env


def _torchrun(nproc, out, *args, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           WORKER, "--out", str(out), *args]
    if not wait:
        return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-process run, in this process: (result, file bytes, settings)."""
    dif, data, _ = W.model_and_data()
    out = tmp_path_factory.mktemp("ref") / "reference.csv"
    res = dataset_nll(dif, data, out=out, **DEFAULTS)
    return res, out.read_bytes(), json.loads(out.with_name("reference.csv.json").read_text())["settings"]


def _rows_in(parts: Path):
    return [r for p in parts.glob("rank*.csv") for r in map(NLLRow.parse, p.read_text().splitlines()) if r]


# -- exact answers ---------------------------------------------------------------------------------

def test_rows_match_the_exact_mixture_density_and_replay_the_per_sample_seeds():
    # Each row's nats is -log p_{t_eps}(y) of the sample's dequantized value y, which is replayed
    # here from the sample's own generator (seed keyed by its index alone); the prior is the exact
    # marginal at T, so the only error is the solver's (bound 1e-3 nats as tests/adapters).
    dif, x, gm = W.model_and_data(12)
    sched = dif.schedule
    T = torch.tensor(float(sched.t_max), dtype=DT)
    t0 = torch.tensor(float(sched.t_min), dtype=DT)
    res = dataset_nll(dif, x, bits=W.BITS, batch_size=5, generator=7, prior_logp=lambda z: gm.log_prob_t(sched, T, z))
    assert [r.index for r in res.rows] == list(range(12)) and res.succeeded == 12
    D = x.shape[1]
    for r in res.rows:
        g = flowsde.per_sample_generators(sample_seeds(7, [r.index]))
        y = flowsde.dequantize(x[r.index:r.index + 1], bits=W.BITS, generator=g)
        exact = -float(gm.log_prob_t(sched, t0, y))
        assert abs(r.nats - exact) < 1e-3, (r, exact)
        bpd = float(flowsde.bits_per_dim(torch.tensor([-exact], dtype=DT), D, bits=W.BITS))
        assert abs(r.bpd - bpd) < 1e-3 / (D * math.log(2))
        assert r.status == "SUCCESS" and math.isnan(r.stderr) and r.nfe > 0
    bpds = [r.bpd for r in res.rows]
    m = sum(bpds) / 12
    assert res.mean_bpd == pytest.approx(m, rel=1e-12)
    assert res.stderr_bpd == pytest.approx(math.sqrt(sum((b - m) ** 2 for b in bpds) / 11 / 12), rel=1e-9)


def test_continuous_data_no_dequantization(capsys):
    dif, x, gm = W.model_and_data(6)
    sched = dif.schedule
    T = torch.tensor(float(sched.t_max), dtype=DT)
    y = x + 0.001  # off the grid: continuous data
    res = dataset_nll(dif, y, batch_size=3, prior_logp=lambda z: gm.log_prob_t(sched, T, z), progress=True)
    assert "6/6" in capsys.readouterr().err  # the progress bar, on stderr, counts samples
    exact = -gm.log_prob_t(sched, torch.tensor(float(sched.t_min), dtype=DT), y)
    got = torch.tensor([r.nats for r in res.rows], dtype=DT)
    assert (got - exact).abs().max() < 1e-3
    assert [r.bpd for r in res.rows] == pytest.approx((got / (4 * math.log(2))).tolist(), rel=1e-12)


def test_seeds_are_distinct_and_keyed_by_index_alone():
    s = sample_seeds(3, range(100_000))
    assert len(set(s)) == 100_000 and all(0 <= v < 2**32 for v in s)
    assert sample_seeds(3, [5, 9]) == [s[5], s[9]]
    assert sample_seeds(4, [0]) != sample_seeds(3, [0])


# -- batch size ------------------------------------------------------------------------------------

@pytest.mark.parametrize("trace,probes", [("exact", 1), ("hutchinson", 3)])
def test_rows_do_not_depend_on_batch_size_with_per_sample_control(trace, probes):
    dif, x, _ = W.model_and_data(10)
    kw = dict(bits=W.BITS, generator=1, trace=trace, probes=probes, per_sample=True)
    runs = [dataset_nll(dif, x, batch_size=b, **kw).rows for b in (1, 3, 10)]

    def key(rows):  # nfe is each sample's own count (stats["nfe_per_sample"])
        return [(r.index, r.nats, r.bpd, r.stderr if trace == "hutchinson" else 0.0, r.status, r.nfe) for r in rows]

    assert key(runs[0]) == key(runs[1]) == key(runs[2])
    if trace == "hutchinson":
        assert all(r.stderr > 0 for r in runs[0])


def test_batch_shared_control_couples_a_batch():
    # Why batches are formed from global indices: with batch-shared steps the rows change with
    # the batch's composition (so the world size must not change it).
    dif, x, _ = W.model_and_data(10)
    a = dataset_nll(dif, x, bits=W.BITS, batch_size=2, per_sample=False).rows
    b = dataset_nll(dif, x, bits=W.BITS, batch_size=5, per_sample=False).rows
    assert [r.nats for r in a] != [r.nats for r in b]
    assert max(abs(r.nats - s.nats) for r, s in zip(a, b)) < 1e-3  # same answer within tolerance


# -- processes -------------------------------------------------------------------------------------

def test_two_processes_write_the_same_file_as_one(tmp_path, reference):
    res, ref, _ = reference
    out = tmp_path / "two.csv"
    p = _torchrun(2, out, "--init", "dataset_nll")  # dataset_nll starts the group itself under torchrun
    assert p.returncode == 0, p.stderr[-3000:]
    assert out.read_bytes() == ref
    assert ref.decode().splitlines()[0] == HEADER and len(ref.decode().splitlines()) == W.N_SAMPLES + 1
    assert "resumed=0 world=2" in p.stdout and res.summary() in p.stdout
    assert json.loads((tmp_path / "two.csv.json").read_text())["mean_bpd"] == res.mean_bpd
    assert not (tmp_path / "two.csv.parts").exists()


def _kill_midway(proc, parts: Path, pid_dir: Path, nproc: int, min_rows: int = 4, timeout: float = 90.0):
    """SIGKILL the job's workers (torchrun starts each in its own session, so by the ids they wrote)
    and its launcher, once some rows are on disk."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if parts.is_dir() and len(_rows_in(parts)) >= min_rows:
            break
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in pid_dir.glob("rank*.pid")]
    assert len(pids) == nproc, "the workers did not start"
    for pid in [proc.pid] + pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    for pid in pids:  # wait until they are gone (not our children: poll)
        while _alive(pid):
            time.sleep(0.02)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def _complete_batches(done):
    return sum(all(i in done for i in range(b, b + 4)) for b in range(0, W.N_SAMPLES, 4))


def _killed_two_process_run(tmp_path):
    """A 2-process run killed mid-way: its output path and the indices its part files hold."""
    out = tmp_path / "killed.csv"
    parts = tmp_path / "killed.csv.parts"
    proc = _torchrun(2, out, "--sleep", "0.01", "--pid-dir", str(tmp_path), wait=False)
    _kill_midway(proc, parts, tmp_path, 2)
    done = {r.index for r in _rows_in(parts)}
    assert not out.exists() and 0 < len(done) < W.N_SAMPLES, "the kill did not land mid-way"
    return out, done


def test_killed_two_process_run_resumes_with_one_process(tmp_path, reference):
    _, ref, _ = reference
    out, done = _killed_two_process_run(tmp_path)
    dif, data, _ = W.model_and_data()
    res = dataset_nll(dif, data, out=out, **DEFAULTS)  # world size 1 now
    assert out.read_bytes() == ref
    assert res.resumed == 4 * _complete_batches(done) >= 4  # kept every complete batch, recomputed none


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_world_size(tmp_path, reference):
    _, ref, _ = reference
    out, done = _killed_two_process_run(tmp_path)
    p = _torchrun(2, out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert out.read_bytes() == ref
    assert f"resumed={4 * _complete_batches(done)} world=2" in p.stdout


@pytest.mark.slow
def test_one_process_killed_resumes_with_two(tmp_path, reference):
    _, ref, _ = reference
    out = tmp_path / "k1.csv"
    parts = tmp_path / "k1.csv.parts"
    proc = subprocess.Popen([sys.executable, WORKER, "--out", str(out), "--sleep", "0.01", "--pid-dir",
                             str(tmp_path)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_midway(proc, parts, tmp_path, 1)
    assert not out.exists() and 0 < len({r.index for r in _rows_in(parts)}) < W.N_SAMPLES
    p = _torchrun(2, out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert out.read_bytes() == ref


def test_torn_line_and_duplicate_rows_are_ignored(tmp_path, reference):
    res, ref, settings = reference
    out = tmp_path / "torn.csv"
    parts = tmp_path / "torn.csv.parts"
    # the state a kill leaves: batches 0-1 on disk, a duplicated row, batch 2 cut with a torn last line
    parts.mkdir()
    (parts / "meta.json").write_text(json.dumps({"settings": settings}))
    lines = [r.line() for r in res.rows[:12]]
    (parts / "rank0-of-2.csv").write_text("\n".join(lines[:8]) + "\n" + lines[0] + "\n")
    (parts / "rank1-of-2.csv").write_text("\n".join(lines[8:11]) + "\n" + lines[11][:-3])  # status cut
    assert NLLRow.parse(lines[11][:-3]) is None
    dif, data, _ = W.model_and_data()
    again = dataset_nll(dif, data, out=out, **DEFAULTS)
    assert out.read_bytes() == ref
    assert again.resumed == 8  # batches 0 and 1; batch 2 recomputed (its rows equal the kept ones)


@pytest.mark.slow
def test_a_failing_rank_reports_its_samples_and_the_others_finish(tmp_path, reference):
    _, ref, _ = reference
    out = tmp_path / "fail.csv"
    p = _torchrun(2, out, "--fail-index", "5")
    assert p.returncode != 0
    # the failing rank logs it as it happens, the final error names the samples and the cause
    assert "rank 1 of 2, samples 4-7: OSError: record 5 is corrupt" in p.stderr
    assert "4 of 40 samples not evaluated (rank 1, samples 4-7: OSError: record 5 is corrupt)" in p.stderr
    assert not out.exists()
    done = {r.index for r in _rows_in(tmp_path / "fail.csv.parts")}
    assert done == set(range(W.N_SAMPLES)) - {4, 5, 6, 7}  # every other sample, on both ranks
    dif, data, _ = W.model_and_data()  # the record fixed: only its batch is computed
    res = dataset_nll(dif, data, out=out, **DEFAULTS)
    assert res.resumed == 36 and out.read_bytes() == ref


def test_failure_in_process_raises_with_the_samples(tmp_path):
    dif, data, _ = W.model_and_data(fail_index=9)
    with pytest.raises(NLLError, match=r"rank 0, samples 8-11: OSError: record 9 is corrupt") as e:
        dataset_nll(dif, data, out=tmp_path / "f.csv", **DEFAULTS)
    assert e.value.failures == [(0, [8, 9, 10, 11], "OSError: record 9 is corrupt")]


def test_non_finite_sample_is_a_row_with_its_status(tmp_path, caplog):
    dif, x, _ = W.model_and_data(8)
    inner = dif.net

    def net(y, t):
        out = inner(y, t)
        bad = (y[:, 0] > 5).reshape(-1, 1)  # only sample 3, moved off the data range below
        return torch.where(bad, torch.full_like(out, float("nan")), out)

    y = x.clone()
    y[3] = 10.0
    dif2 = type(dif)(net, dif.schedule, prediction="eps")
    res = dataset_nll(dif2, y, batch_size=8, per_sample=True)  # continuous data (10 is off the 8-bit grid)
    assert [r.status for r in res.rows] == ["SUCCESS"] * 3 + ["NON_FINITE"] + ["SUCCESS"] * 4
    assert res.failed == [(3, "NON_FINITE")] and res.succeeded == 7
    assert math.isfinite(res.mean_bpd) and "NON_FINITE at samples 3" in res.summary()
    # issue 21: the failed row's numbers are NaN (not a partial value that reads like an answer), written as
    # nan and read back as NaN by a resume
    bad = res.rows[3]
    assert math.isnan(bad.nats) and math.isnan(bad.bpd) and math.isnan(bad.stderr) and bad.nfe > 0
    assert all(math.isfinite(r.nats) and math.isfinite(r.bpd) for r in res.rows if r.status == "SUCCESS")
    out = tmp_path / "nf.csv"
    first = dataset_nll(dif2, y, batch_size=8, per_sample=True, out=out)
    assert out.read_text().splitlines()[4] == f"3,nan,nan,nan,{bad.nfe},NON_FINITE"
    again = dataset_nll(dif2, y, batch_size=8, per_sample=True, out=out)
    assert again.resumed == 8 and again.rows == first.rows == res.rows and math.isnan(again.rows[3].nats)
    # reported when it happens, by the rank that met it, with the status' explanation
    assert any("rank 0 of 1, samples 3: NON_FINITE (the state or a function value became non-finite" in r.message
               for r in caplog.records)


# -- bad input -------------------------------------------------------------------------------------

def test_resume_with_other_settings_is_refused(tmp_path):
    dif, x, _ = W.model_and_data(8)
    out = tmp_path / "a.csv"
    dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=4)
    with pytest.raises(InputError, match=r"batch_size: 4 there vs 2 now"):
        dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=2)
    again = dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=4)  # same settings: read back, nothing computed
    assert again.resumed == 8


class _Net(torch.nn.Module):
    """A small eps network (issue 21's resume tests: two of them differ by their weights alone)."""

    def __init__(self, seed):
        super().__init__()
        self.lin = torch.nn.Linear(W.DIM, W.DIM, dtype=DT)
        with torch.no_grad():
            self.lin.weight.copy_(0.1 * torch.randn(W.DIM, W.DIM, generator=torch.Generator().manual_seed(seed),
                                                    dtype=DT))
            self.lin.bias.zero_()

    def forward(self, x, t):
        return self.lin(x)


def _module_model(seed):
    from flowsde.adapters import VP, Diffusion

    return Diffusion(_Net(seed), VP(), prediction="eps")


def test_resume_refuses_another_model_of_the_same_name(tmp_path):
    # issue 21: a rerun with another model (same class, other weights) read the first model's rows back
    _, x, _ = W.model_and_data(8)
    out = tmp_path / "m.csv"
    first = dataset_nll(_module_model(0), x, out=out, bits=W.BITS, batch_size=4)
    with pytest.raises(InputError, match=r"model weights: sha256 [0-9a-f]{12}\.\.\. there vs sha256 [0-9a-f]{12}"
                                         r"\.\.\. now.*pass another out \(--out\) or delete"):
        dataset_nll(_module_model(1), x, out=out, bits=W.BITS, batch_size=4)
    with pytest.raises(InputError, match=r"prediction: 'eps' there vs 'x0' now"):
        dataset_nll(_prediction_x0(), x, out=out, bits=W.BITS, batch_size=4)
    with pytest.raises(InputError, match=r"model weights"):  # a mid-run file (part files) is checked alike
        out.unlink()
        (tmp_path / "m.csv.parts").mkdir()
        (tmp_path / "m.csv.parts" / "meta.json").write_text(json.dumps({"settings": first.settings}))
        (tmp_path / "m.csv.parts" / "rank0-of-1.csv").write_text(first.rows[0].line() + "\n")
        dataset_nll(_module_model(1), x, out=out, bits=W.BITS, batch_size=4)
    again = dataset_nll(_module_model(0), x, out=out, bits=W.BITS, batch_size=4)  # the same weights: resumed
    assert again.resumed == 0 and again.rows == first.rows  # (batch 0 misses rows: computed again)


def _prediction_x0():
    from flowsde.adapters import VP, Diffusion

    return Diffusion(_Net(0), VP(), prediction="x0")


def test_resume_refuses_other_data_and_a_hand_edited_file(tmp_path):
    # issue 21: a rerun on other data (same shape) read the first data's rows back; a hand-edited row of a
    # finished file was accepted
    dif, x, _ = W.model_and_data(8)
    out = tmp_path / "d.csv"
    first = dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=4)
    y = x.clone()
    y[5] = -y[5]
    with pytest.raises(InputError, match=r"data rows 4-7: sha256 [0-9a-f]{12}\.\.\. there vs sha256 "
                                         r"[0-9a-f]{12}\.\.\. now"):
        dataset_nll(dif, y, out=out, bits=W.BITS, batch_size=4)
    with pytest.raises(InputError, match=r"data dtype: 'torch.float64' there vs 'torch.float32' now"):
        dataset_nll(dif, x.float(), out=out, bits=W.BITS, batch_size=4, dtype=DT)
    # a Dataset of the same rows is the same data
    ds = torch.utils.data.TensorDataset(x)
    assert dataset_nll(dif, ds, out=out, bits=W.BITS, batch_size=4).resumed == 8
    text = out.read_text()
    out.write_text(text.replace(first.rows[2].line(), first.rows[2].line().replace(",", ",1", 1)))
    with pytest.raises(InputError, match=r"is not the file dataset_nll wrote \(rows checksum sha256 "):
        dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=4)


def test_resume_compares_resolved_settings(tmp_path):
    # issue 21: "time_warp: None there vs 1.5 now" refused one setting spelled two ways
    dif, x, _ = W.model_and_data(4)
    out = tmp_path / "r.csv"
    dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=4)
    assert dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=4, time_warp=1.5).resumed == 4
    assert dataset_nll(dif, x, out=out, levels=2**W.BITS, batch_size=4, rtol=1e-5, bpd_tol=1e-5,
                       data_range=(-1, 1), t_eps=float(dif.schedule.t_min)).resumed == 4
    with pytest.raises(InputError, match=r"time_warp: 1.5 there vs 1.0 now"):
        dataset_nll(dif, x, out=out, bits=W.BITS, batch_size=4, time_warp=1)


def test_resume_of_a_plain_callable_says_it_cannot_verify_it(tmp_path, caplog):
    from flowsde.adapters import VP, Diffusion

    def net(x, t):  # holds no tensor: nothing to hash
        return 0.1 * x

    _, x, _ = W.model_and_data(4)
    out = tmp_path / "p.csv"
    first = dataset_nll(Diffusion(net, VP(), prediction="eps"), x, out=out, bits=W.BITS, batch_size=4)
    assert first.settings["model_weights"].startswith("unverifiable")
    again = dataset_nll(Diffusion(net, VP(), prediction="eps"), x, out=out, bits=W.BITS, batch_size=4)
    assert again.resumed == 4
    assert any("resume cannot verify the model" in r.message and "net" in r.message for r in caplog.records)


@pytest.mark.parametrize("kw,match", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(limit=-1), "limit must be an int >= 1"),
    (dict(bits=8, levels=17), "levels=17 and bits=8 disagree"),
    (dict(throw=True), "throw is set by dataset_nll"),
    (dict(generator=-1), "generator must be an int >= 0"),
])
def test_bad_arguments(kw, match):
    dif, x, _ = W.model_and_data(4)
    with pytest.raises(InputError, match=match):
        dataset_nll(dif, x, **kw)


def test_bad_out_and_data(tmp_path):
    dif, x, _ = W.model_and_data(4)
    with pytest.raises(InputError, match="is a directory"):
        dataset_nll(dif, x, out=tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        dataset_nll(dif, x, out=tmp_path / "no" / "x.csv")
    (tmp_path / "foreign.csv").write_text("hello\n")
    with pytest.raises(InputError, match="was not written by dataset_nll"):
        dataset_nll(dif, x, out=tmp_path / "foreign.csv")
    with pytest.raises(InputError, match="with an event dimension"):
        dataset_nll(dif, x[:, 0])
    with pytest.raises(InputError, match="expected a flowsde.adapters.Diffusion"):
        dataset_nll(object(), x)
    with pytest.raises(InputError):  # data of the wrong shape for the model: the first batch's error, once
        dataset_nll(dif, torch.zeros(4, 3, dtype=DT))


@pytest.mark.slow
def test_torchrun_flowsde_nll_command_matches_the_library_in_one_process(tmp_path):
    # the command as users start it: `torchrun ... -m flowsde nll` (the CLI starts no process group;
    # dataset_nll starts one itself under torchrun), on the shipped digits model
    fm = pytest.importorskip("flowsde.models")
    out = tmp_path / "cli.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "flowsde",
           "nll", "--limit", "16", "--batch-size", "4", "--trace", "hutchinson", "--probes", "2", "--dtype", "float64",
           "--out", str(out), "--quiet"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    from flowsde.cli._nll import BPD_TOL  # the command's default --bpd-tol (its rtol/atol follow it)

    res = dataset_nll(fm.load("digits-eps", net_dtype=DT), fm.digits("test"), levels=17, data_range=(-1.0, 1.0),
                      trace="hutchinson", probes=2, batch_size=4, limit=16, bpd_tol=BPD_TOL,
                      out=tmp_path / "lib.csv")
    assert out.read_bytes() == (tmp_path / "lib.csv").read_bytes()
    assert f"{res.mean_bpd:.4f}" in p.stdout
