"""Benchmarks measure this checkout's code: refuse to run against flowsde installed from elsewhere.

An editable install points at one clone; ``make test`` in another clone (a fresh-clone CI check)
re-points it there, and a benchmark run here afterwards would silently time that clone's code.
Imported first by every ``bench_*.py``.
"""

import pathlib

import flowsde
import flowsde.adapters

ROOT = pathlib.Path(__file__).resolve().parents[1]

for _module, _folder in ((flowsde, "flowsde"), (flowsde.adapters, "adapters")):
    _got = pathlib.Path(_module.__file__).resolve().parent
    if _got != ROOT / _folder:
        raise SystemExit(
            f"benchmarks: {_module.__name__} is imported from {_got}, not from this checkout ({ROOT / _folder}); "
            f"run `pip install --no-deps -e {ROOT}` first (a `make test` in another clone re-points the "
            "editable install there)."
        )
