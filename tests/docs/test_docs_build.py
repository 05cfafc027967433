"""The documentation builds, strictly, and its links and API pages point at things that exist.

`mkdocs build --strict` (what `make docs` runs) fails on a warning: a `:::` reference in
docs/api/ to a name that is gone, a link to a missing page or anchor, a page left out of the
nav. The API reference is collected by importing flowsde, so the build sees this checkout's
code only if the editable install points here (`make test` re-points it first).
"""

import importlib
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# [text](target) with a relative target; absolute URLs, mail links and pure anchors are left out
_LINK = re.compile(r"\]\(\s*([^)\s]+?)\s*(?:\"[^\"]*\")?\)")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

# each public package and its API page: every name the package exports is documented there
API_PAGES = {
    "flowsde": "flowsde.md",
    "flowsde.grids": "grids.md",
    "flowsde.solvers": "solvers.md",
    "flowsde.adapters": "adapters.md",
    "flowsde.validation": "validation.md",
    "flowsde.workloads": "workloads.md",
    "flowsde.models": "models.md",
}
# names of `flowsde` documented on their own page rather than as a member
_SUBMODULE_PAGES = {"grids", "solvers"}


def _markdown_files():
    return sorted(DOCS.glob("*.md")) + sorted((DOCS / "api").glob("*.md")) + [ROOT / "README.md"]


def _strip_code(text):
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def test_relative_links_point_at_existing_files():
    broken = []
    for md in _markdown_files():
        for target in _LINK.findall(_strip_code(md.read_text(encoding="utf-8"))):
            if _EXTERNAL.match(target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if path and not (md.parent / path).exists():
                broken.append(f"{md.relative_to(ROOT)}: ]({target})")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_every_exported_name_has_its_api_entry():
    missing = []
    for package, page in API_PAGES.items():
        module = importlib.import_module(package)
        text = (DOCS / "api" / page).read_text(encoding="utf-8")
        documented = set(re.findall(r"^::: " + re.escape(package) + r"\.(\w+)\s*$", text, flags=re.M))
        exported = set(getattr(module, "__all__", ()))
        if package == "flowsde":
            exported -= _SUBMODULE_PAGES
        missing += [f"{package}.{name} (docs/api/{page})" for name in sorted(exported - documented)]
    assert not missing, "exported names without an entry in the API reference:\n" + "\n".join(missing)


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip("mkdocs / mkdocstrings[python] not installed (pip install -e .[docs])")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, "mkdocs build --strict failed:\n" + run.stderr[-6000:]
    assert (tmp_path / "site" / "api" / "solvers" / "index.html").is_file()
