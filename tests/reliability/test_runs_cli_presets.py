"""`ulfine presets | grep ...` sees every preset's full name: piped output is one plain line per
preset (a table cut to the pipe's 80 columns shortened names with "…"), and ``--names`` prints
the names alone."""

from __future__ import annotations

from ulfine.cli import main
from ulfine.config import list_presets


def test_piped_presets_are_one_full_line_each(capsys):
    assert main(["presets"]) == 0  # capsys: stdout is not a terminal
    out = capsys.readouterr().out
    assert "…" not in out
    lines = out.splitlines()
    for name, desc in list_presets().items():
        assert any(line.startswith(name + " ") and line.endswith("  " + desc) for line in lines), name
    assert "method=" in out  # the registered methods still follow


def test_presets_names_prints_the_names_alone(capsys):
    assert main(["presets", "--names"]) == 0
    assert capsys.readouterr().out.splitlines() == list(list_presets())
