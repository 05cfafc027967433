"""Run every benchmark in this folder, one after the other (figures go to stdout)."""

import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).parent
for script in sorted(here.glob("bench_*.py")):
    print(f"\n=== {script.name}", flush=True)
    subprocess.check_call([sys.executable, str(script)])
