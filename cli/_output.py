"""Output paths (checked before any work) and progress bars."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from ._errors import CLIError


def progress_enabled(quiet: bool) -> bool:
    """tqdm bars go to stderr, only when it is a terminal and ``--quiet`` is off."""
    return not quiet and sys.stderr.isatty()


def out_dir(path: Optional[str], command: str) -> Path:
    """Create (if needed) and check the ``--out`` folder; ``None``: a new folder named after the command."""
    if path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        p = Path(f"flowsde-{command}-{stamp}")
        k = 1
        while p.exists():
            k += 1
            p = Path(f"flowsde-{command}-{stamp}-{k}")
    else:
        p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {p}: exists and is not a folder; name a folder (it is created if missing).")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".flowsde-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CLIError(f"--out {p}: cannot write there ({e.strerror or e}); pick a writable folder.") from None
    return p


def out_file(path: str, *, suffix: str = ".csv") -> Path:
    """Check that ``--out FILE`` can be written (its folder exists and is writable; an existing file is kept)."""
    p = Path(path)
    if p.suffix.lower() != suffix:
        raise CLIError(f"--out {p}: expected a {suffix} file name (e.g. results{suffix}).")
    if p.is_dir():
        raise CLIError(f"--out {p}: is a folder; name a {suffix} file.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"--out {p}: folder {parent} does not exist; create it first or pick another path.")
    if (p.exists() and not os.access(p, os.W_OK)) or not os.access(parent, os.W_OK):
        raise CLIError(f"--out {p}: not writable; pick a writable path.")
    return p
