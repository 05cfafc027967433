"""mkdocs hook: let mkdocstrings read flowsde's source as installed, without importing it.

pyproject.toml installs `adapters/`, `validation/`, `workloads/`, `models/` and `cli/` as
`flowsde.adapters`, ... (setuptools `package-dir`). A static scan of the repository sees them
as top-level folders, not as subpackages of `flowsde`, so this hook lays out a temporary
`flowsde/` of symbolic links, the installed layout, and points the python handler at it. The
reference is then read from this checkout's files whatever flowsde is installed from, and
nothing is imported.
"""

from __future__ import annotations

import atexit
import pathlib
import re
import shutil
import tempfile

from mkdocs.plugins import event_priority

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _package_dirs() -> dict:
    """`{"flowsde.adapters": "adapters", ...}` from `[tool.setuptools] package-dir`."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    line = re.search(r"^package-dir\s*=\s*\{(.*)\}\s*$", text, flags=re.M)
    if line is None:
        raise RuntimeError("docs: no [tool.setuptools] package-dir line in pyproject.toml")
    return dict(re.findall(r'"([\w.]+)"\s*=\s*"([\w./-]+)"', line.group(1)))


def _layout(into: pathlib.Path) -> None:
    mapping = _package_dirs()
    top = into / "flowsde"
    top.mkdir()
    for entry in (ROOT / mapping.get("flowsde", "flowsde")).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        parts = package.split(".")
        if len(parts) == 2 and parts[0] == "flowsde" and (ROOT / folder).is_dir():
            target = top / parts[1]
            if target.is_symlink():
                target.unlink()
            target.symlink_to(ROOT / folder, target_is_directory=True)


@event_priority(100)  # before mkdocstrings' on_config, which creates the handler
def on_config(config):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="flowsde-docs-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    _layout(tmp)
    handlers = config["plugins"]["mkdocstrings"].config["handlers"]
    handlers.setdefault("python", {})["paths"] = [str(tmp)]
    return config
