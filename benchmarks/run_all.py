"""Run every benchmark in this folder, one after the other (figures go to stdout)."""

import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).parent
#: scripts whose full run takes hours on a CPU: make bench runs their quick mode (their docstrings give the full command)
QUICK = {"bench_likelihood_peers.py": ["--quick"]}
for script in sorted(here.glob("bench_*.py")):
    print(f"\n=== {script.name}", flush=True)
    subprocess.check_call([sys.executable, str(script), *QUICK.get(script.name, [])])
