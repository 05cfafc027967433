"""``flowsde demo``: the README's main job (about a minute on a CPU: slow-marked)."""

import pytest

from _clihelpers import png_size, read_csv, run, table_rows


@pytest.mark.slow
def test_demo_on_the_shipped_digits_model(capsys, tmp_path):
    rc, out, err = run(capsys, "demo", "--out", tmp_path / "d")
    assert rc == 0, err
    folder = tmp_path / "d"
    for name in ("compare.csv", "compare.json", "errors.png", "samples.png", "nll.csv"):
        assert f"{folder / name}" in out and (folder / name).stat().st_size > 0
    rows = {(r["solver"], r["NFE"]): r for r in table_rows(out)}
    assert float(rows[("heun", "40")]["error"]) < float(rows[("euler", "40")]["error"])
    assert [r["setting"] for r in table_rows(out) if r["solver"] == "reference"] == ["noise floor"]
    nll = read_csv(folder / "nll.csv")
    assert len(nll) == 32 and all(r["status"] == "SUCCESS" for r in nll)
    assert "mean bits/dim" in out and png_size(folder / "errors.png") == (800, 500)
