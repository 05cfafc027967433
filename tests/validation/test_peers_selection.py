"""How ``benchmarks/bench_likelihood_peers.py`` picks a peer's tolerance: in hindsight (``cheapest``: the cheapest
swept point whose worst error over every sample reaches the target) and without it (``held_out``: chosen on the
first samples, scored on the others). The tables of docs/benchmarks.md ("Likelihood: the promise per sample")
rest on these two rules; scripted sweeps pin them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_likelihood_peers as bench  # noqa: E402


def _pt(tol, nfe, errs):
    return dict(tol=tol, nfe=nfe, worst=max(errs), err_bpd=list(errs))


# four digits; the loose tolerance meets 1e-2 on the first two only, the middle one on all but the last
SWEEP = [
    _pt(1e-2, 30, [0.004, 0.009, 0.011, 0.003]),
    _pt(1e-3, 50, [0.001, 0.002, 0.003, 0.012]),
    _pt(1e-4, 80, [1e-4, 2e-4, 3e-4, 4e-4]),
    dict(tol=1e-5, raises="InputError: outside the range"),
]


def test_cheapest_takes_the_worst_over_every_sample():
    assert bench.cheapest(SWEEP, 1e-2)["tol"] == 1e-4  # 1e-2 and 1e-3 each leave one sample above
    assert bench.cheapest(SWEEP, 1e-5) is None


def test_held_out_chooses_on_the_first_samples_and_scores_the_others():
    q, worst = bench.held_out(SWEEP, 1e-2, n_cal=2)
    assert q["tol"] == 1e-2 and worst == 0.011  # chosen on digits 0-1; digit 2 misses the target
    q, worst = bench.held_out(SWEEP, 2e-3, n_cal=2)
    assert q["tol"] == 1e-3 and worst == 0.012
    assert bench.held_out(SWEEP, 1e-5, n_cal=2) == (None, None)


def test_held_out_table_counts_the_misses(capsys):
    res = dict(samples=4, peers=dict(scipy=SWEEP, kdiff="n/a: not applicable"))
    bench.held_out_table(res, [1e-2, 1e-3], ["scipy", "kdiff"])
    row = res["held_out"]["scipy 0.01"]
    assert row["tol"] == 1e-2 and row["beyond"] == 1 and abs(row["worst_over_target"] - 1.1) < 1e-12
    assert "scipy 0.001" in res["held_out"] and res["held_out"]["scipy 0.001"]["beyond"] == 0  # 1e-4 chosen
    assert "kdiff 0.01" not in res["held_out"]
    assert "1/2" in capsys.readouterr().out
