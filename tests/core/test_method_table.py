"""The meta-test of tests/method_table.py: one entry per method of flowsde.solvers.METHODS, each
entry a method, and every declared order fitted somewhere or its absence explained (fast)."""

import pytest

import flowsde
from method_table import FAMILIES, KINDS, PROBLEMS, SETUPS, TABLE, names, order_cases

DECLARED = {"ode": "order", "strong": "strong_order", "weak": "weak_order"}


def test_every_method_has_an_entry_and_every_entry_a_method():
    methods, table = set(flowsde.solvers.METHODS), set(TABLE)
    assert not methods - table, f"methods of flowsde.solvers.METHODS without an entry in tests/method_table.py: " \
                                f"{sorted(methods - table)}"
    assert not table - methods, f"entries of tests/method_table.py that name no method: {sorted(table - methods)}"


def test_setups_name_a_problem_class_and_a_test():
    for name, setup in SETUPS.items():
        assert setup.problem in PROBLEMS, (name, setup)
        assert setup.test.startswith("tests/") and "::test_" in setup.test, (name, setup)


@pytest.mark.parametrize("name", list(TABLE))
def test_entry_is_consistent_with_the_solver(name):
    entry = TABLE[name]
    assert entry.family in FAMILIES
    solver = flowsde.solvers.get_solver(name)
    assert bool(getattr(solver, "adaptive", False)) == (entry.family == "adaptive"), (name, entry.family)
    assert isinstance(solver, flowsde.solvers.SemiLinearSolver) == (entry.family == "sampler"), (name, entry.family)
    if entry.alias_of is not None:  # another name of a method: the same solver, cases kept on the method's entry
        target = TABLE[entry.alias_of]
        assert target.alias_of is None and not entry.orders and not entry.not_fitted, name
        assert target.family == entry.family
        assert type(solver) is type(flowsde.solvers.get_solver(entry.alias_of)), name
        assert solver.name == flowsde.solvers.get_solver(entry.alias_of).name, name
        return
    for case in entry.orders:
        assert case.setup in SETUPS and case.kind in KINDS, (name, case)
        sde_problem = case.problem not in ("ode", "semilinear")
        assert (case.kind != "ode") == sde_problem, (name, case)  # ODE kinds on ODEs, strong/weak on SDEs
        levels = list(case.levels)
        assert len(levels) >= 3 and levels == sorted(set(levels)) and levels[0] >= 0, (name, case)
        assert case.ref_level is None or case.ref_level > levels[-1], (name, case)
        lo, hi = case.tol
        assert lo < 0 < hi, (name, case)
        assert case.samples is None or case.samples >= 2, (name, case)
        declared = case.declared(name)  # the options are the solver's, and it declares what is fitted
        assert isinstance(declared, (int, float)) and declared > 0, (name, case, declared)
    # every order the solver declares is fitted by some case, or the entry says why not (as it does when it
    # has no case at all) -- and only then
    unfitted = [attr for kind, attr in DECLARED.items()
                if getattr(solver, attr) is not None and not any(c.kind == kind for c in entry.orders)]
    assert bool(unfitted or not entry.orders) == bool(entry.not_fitted), (name, unfitted, entry.not_fitted)


def test_order_cases_cover_the_table():
    listed = [(p.values[0], p.values[1]) for setup in SETUPS for p in order_cases(setup)]
    assert len(listed) == sum(len(e.orders) for e in TABLE.values())
    assert {m for m, _ in listed} == {m for m, e in TABLE.items() if e.orders}
    ids = [(p.id, kind) for setup in SETUPS for kind in KINDS for p in order_cases(setup, kind)]
    assert len(ids) == len(listed) and len(set(ids)) == len(ids)  # readable and unique within a kind
    with pytest.raises(ValueError, match="set-ups are"):
        order_cases("no such set-up")


def test_names_reads_the_solvers_declarations():
    core = names("core")
    assert core == ["euler", "heun", "euler_maruyama", "pc", "milstein", "srk", "torchsde_euler"]
    assert "em" in names("core", aliases=True) and "em" not in core
    assert names("core", sde=False) == ["euler", "heun"]
    assert names("core", ode=False) == ["milstein", "srk", "torchsde_euler"]
    assert names("sampler", ode=True) == ["ddim", "dpm_2", "dpmpp_2m", "lms", "unipc", "edm", "deis", "dpmpp_3m",
                                          "dpmpp_single", "sa_solver"]
    assert names("sampler", sde=True) == ["ddim", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde",
                                          "dpmpp_3m_sde", "dpm_2_ancestral", "dpmpp_sde", "sa_solver"]
    assert set(names()) | set(names(aliases=True)) == set(flowsde.solvers.METHODS)
    with pytest.raises(ValueError, match="families are"):
        names("fixed")
