"""``ulfine compare RUN_DIR...``: finished run folders -> one paper-style table.

Rows are methods and columns settings (``--by preset``, the default), or the other way round
(``--by method``), or one column per seed (``--by seed``); a cell shows overall and tail accuracy
of the final model, mean ± sample std over the runs it holds. The table itself is
:mod:`ulfine.apps.results`'s (the demo, the benchmark and the reproduction scripts print the same
format); this module only reads run folders and says when the runs of a cell differ in more than
their seed, because then their mean is not a mean over seeds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import DataError
from ..jsonable import flatten
from ..registry import METHODS, load_builtins
from .results import METRICS_FILE, Cell, RunRecord, pivot, pivot_csv, pivot_table

By = Literal["preset", "method", "seed"]
#: what a cell shows
CELL_METRICS = ("overall", "tail")
#: the field's figures, shown after the honest ones: the geometric mean of per-class recall (final
#: model) and the best test accuracy over training (selected on the test set, as papers report it)
FIELD_METRICS = ("gm_recall", "best_on_test")
#: keys that say where and how a run was computed, not what: runs may differ in them (and in seed)
NOT_THE_EXPERIMENT = ("seed", "output_dir", "resume", "plugins", "train.device", "train.progress", "train.log_every",
                      "train.checkpoint_every", "train.log_with", "train.compile", "data.root", "data.num_workers",
                      "data.download", "eval.batch_size", "cache.", "model.cache_dir", "model.text_cache_dir")


@dataclass(frozen=True)
class FinishedRun:
    """A run folder's record for the table, and its flat config (to check what differs)."""

    record: RunRecord
    setting: str
    config: dict[str, Any]
    run_dir: Path


def method_label(config: dict[str, Any]) -> str:
    """``ulfine (lft/adaptformer)``: the method and how the tower was fine-tuned (``zeroshot``
    alone: a method that does not train fine-tunes nothing)."""
    method = config.get("method", "?")
    load_builtins()
    if method in METHODS and not METHODS.get(method).trains:
        return str(method)
    finetune = config.get("finetune", "?")
    how = f"{finetune}/{config.get('peft')}" if finetune == "lft" else finetune
    return f"{method} ({how})"


def read_mapping(path: Path) -> dict[str, Any]:
    """A run folder's YAML or JSON file (``config.yaml``, ``final_metrics.json``, ``split.json``)
    as a mapping, or one line saying it is damaged. Why: these files are read as they are (no
    schema, no plugins), so a file cut short or edited by hand must fail here, naming it."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path} cannot be read ({type(exc).__name__}); the file is damaged: re-run "
                        "`ulfine eval` on the run, or leave the run out") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is damaged (not a mapping of keys to values); leave the run out")
    return data


def read_run(run_dir: Path) -> FinishedRun:
    """One finished run folder (``config.yaml`` + ``final_metrics.json``); a damaged file is one
    line naming it."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file() or not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a finished run (needs config.yaml and {METRICS_FILE})")
    config = read_mapping(run_dir / "config.yaml")
    metrics = read_mapping(run_dir / METRICS_FILE)
    setting = config.get("preset") or (config.get("data") or {}).get("dataset", "?")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{run_dir / 'config.yaml'}: seed is {seed!r}, not an integer; the file is damaged")
    record = RunRecord(method_label(config), str(setting), seed, metrics)
    return FinishedRun(record, str(setting), flatten(config), run_dir)


def _keys(by: By) -> tuple[Callable[[RunRecord], str], Callable[[RunRecord], str], str]:
    """(row of a record, column of a record, the corner's title) for ``--by``."""
    if by == "preset":
        return (lambda r: r.label), (lambda r: r.preset), "method \\ setting"
    if by == "method":
        return (lambda r: r.preset), (lambda r: r.label), "setting \\ method"
    return (lambda r: f"{r.label} @ {r.preset}"), (lambda r: f"seed {r.seed}"), "run \\ seed"


def differing_keys(runs: Sequence[FinishedRun]) -> list[str]:
    """Config keys (other than seed and where/how it ran) whose values differ among ``runs``."""
    keys = set().union(*(r.config for r in runs)) if runs else set()
    return sorted(k for k in keys if not k.startswith(NOT_THE_EXPERIMENT)
                  and len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1)


def cell_notes(runs: Sequence[FinishedRun], cells: Sequence[Cell], row_of: Callable, column_of: Callable) -> list[str]:
    """One line per cell whose runs are not seeds of one experiment (a repeated seed, or other keys differ)."""
    notes = []
    for cell in cells:
        members = [r for r in runs if row_of(r.record) == cell.row and column_of(r.record) == cell.column]
        where = f"{cell.row} | {cell.column}"
        if len(set(cell.seeds)) < len(cell.seeds):
            notes.append(f"{where}: {len(cell.seeds)} runs share seeds {sorted(cell.seeds)}; not independent seeds")
        diff = differing_keys(members)
        if diff:
            notes.append(f"{where}: the {len(members)} runs differ in more than the seed ({', '.join(diff[:8])}"
                         f"{', ...' if len(diff) > 8 else ''}); the cell averages different experiments")
    return notes


@dataclass
class Comparison:
    """The table, its cells and the notes about cells that are not clean seed averages."""

    markdown: str
    csv: str
    notes: list[str]
    field_markdown: str = ""

    def text(self) -> str:
        notes = [f"- note: {n}" for n in self.notes] or ["All cells: runs that differ only in their seed."]
        field = ["", "For comparison with published tables (not estimates of accuracy on new data):", "",
                 self.field_markdown, "", "Cells: geometric mean of per-class recall of the final model / best test "
                 "accuracy over training (%; selected on the test set, as most papers report it)."]
        return "\n".join([self.markdown, "", "Cells: overall / tail accuracy (%) of the final model, mean ± std over "
                          "the cell's runs (seeds); a single run shows its value.", *notes,
                          *(field if self.field_markdown else []), ""])


def compare_runs(run_dirs: Sequence[Path], by: By = "preset") -> Comparison:
    """The comparison table of finished run folders (``ulfine compare``)."""
    if not run_dirs:
        raise DataError("ulfine compare needs at least one run folder")
    runs = [read_run(Path(d)) for d in run_dirs]
    row_of, column_of, corner = _keys(by)
    cells = pivot([r.record for r in runs], row_of, column_of, CELL_METRICS)
    table = pivot_table(cells, CELL_METRICS, corner)
    field = pivot_table(pivot([r.record for r in runs], row_of, column_of, FIELD_METRICS), FIELD_METRICS, corner)
    return Comparison(table.markdown(), pivot_csv(cells, CELL_METRICS), cell_notes(runs, cells, row_of, column_of),
                      field.markdown())


__all__ = ["CELL_METRICS", "FIELD_METRICS", "Comparison", "FinishedRun", "compare_runs", "differing_keys",
           "method_label", "read_mapping", "read_run"]
