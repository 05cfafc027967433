"""Running the ``flowsde`` command in-process and reading what it wrote."""

import csv
import json

from flowsde.cli import main


def run(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``flowsde *argv``."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def table_rows(stdout):
    """The Markdown table rows printed by ``flowsde compare``: [{solver, setting, NFE, error, SW2, s}]."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[0] == "likelihood rtol=atol":
            break
        rows.append(dict(zip(head, cells)))
    return rows


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_size(path):
    with open(path, "rb") as f:
        b = f.read(24)
    assert b[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")


def one_line_error(rc, err):
    """The command failed with exactly one line on stderr and no traceback."""
    assert rc not in (0, None), f"expected a failure, got exit status {rc}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert "Traceback" not in err and "error" in lines[0]
    return lines[0]
