"""Install flowsde and its test dependencies without pulling a CUDA torch by accident.

* If a working torch is already importable (a user's GPU machine, or a re-run),
  it is kept as it is.
* Otherwise ``torch==<version>`` is installed. On a machine whose pip finds a
  local CPU wheel of that version (this project's machines), that is what pip
  takes; pinning the version keeps pip from resolving an unpinned ``torch`` to
  a multi-gigabyte CUDA build of a newer release.

Then ``pip install -e .[test,plots,data,weights,diffusers,docs]`` (diffusers is an
optional integration; installing it does not touch torch; docs builds the API reference, which the
tests check). With
``--anchors``, also k-diffusion's wheel without its (heavy) dependencies: the
test suite loads only its ``sampling.py`` to compare samplers with the real
thing.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-version", default="2.13.0")
    ap.add_argument("--anchors", action="store_true", help="also install reference implementations for tests")
    args = ap.parse_args()
    if importlib.util.find_spec("torch") is None:
        pip(f"torch=={args.torch_version}")
    else:
        import torch  # noqa: F401

        print(f"torch {torch.__version__} already installed; keeping it.", flush=True)
    # torch is satisfied now, so the editable install cannot replace it.
    pip("-e", ".[test,plots,data,weights,diffusers,docs]")
    if args.anchors and importlib.util.find_spec("k_diffusion") is None:
        pip("--no-deps", "k-diffusion==0.1.1.post1")


if __name__ == "__main__":
    main()
