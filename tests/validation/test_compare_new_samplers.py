"""The samplers of issue 22 are selectable in compare_solvers, each run at its NFE budget."""

import torch

from flowsde.adapters import VP, Diffusion
from flowsde.workloads import compare_solvers, default_mixture


def test_new_samplers_run_in_compare_at_their_budgets():
    gm = default_mixture(2)
    dif = Diffusion(gm.oracle(VP(), "eps"), VP(), prediction="eps")
    methods = ["dpm_fast", "deis", "dpmpp_3m", "dpmpp_single", "sa_solver", "dpm_2_ancestral", "dpmpp_sde"]
    r = compare_solvers(dif, gm, methods=methods, budgets=[20], samples=32, rk45_tols=[1e-3])
    rows = {row.method: row for row in r.rows if row.method != "reference"}
    assert set(rows) == set(methods)
    for m, row in rows.items():
        assert row.nfe == 20, (m, row.nfe)  # every one of them fits the budget exactly
        assert torch.isfinite(torch.tensor(row.distance)), m
    # the deterministic ones are scored against the PF-ODE reference, and at 20 NFE they are close to it
    for m in ("dpm_fast", "deis", "dpmpp_3m"):
        assert rows[m].error < 0.05, (m, rows[m].error)
    assert rows["dpm_fast"].grid == "its own"


def test_default_grids_are_the_measured_ones_per_family():
    # docs/samplers.md, "Default grids, by measurement": per sampler and schedule family; edm where unmeasured
    from flowsde.adapters import EDM, Linear
    from flowsde.workloads import default_grid

    assert default_grid("dpmpp_2m", VP()) == "log_snr"
    assert default_grid("dpmpp_2m", Linear()) == "quadratic"
    assert default_grid("heun", EDM()) == "edm"
    assert default_grid("em", Linear()) == "uniform"  # an alias resolves to its method's default


def test_adaptive_sde_runs_in_compare_on_the_reverse_sde():
    gm = default_mixture(2)
    dif = Diffusion(gm.oracle(VP(), "eps"), VP(), prediction="eps")
    r = compare_solvers(dif, gm, methods=["adaptive_sde"], budgets=[10], samples=32, rk45_tols=[0.1, 0.01])
    rows = [row for row in r.rows if row.method == "adaptive_sde"]
    assert [row.setting for row in rows] == ["tol 1e-01", "tol 1e-02"]
    assert rows[0].nfe < rows[1].nfe  # tighter tolerance, more steps
    assert all(row.error is None for row in rows)  # its own noise: no strong error, scored by distance
