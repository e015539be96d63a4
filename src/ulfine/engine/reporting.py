"""Run folder, log file, experiment trackers, progress bar and the end-of-run summary table.

Only the main process writes; the others get no-op reporters. Scalars go to the trackers of
``train.log_with`` through Accelerate's tracker classes: TensorBoard (default, ``RUN_DIR/tb``),
Weights & Biases (``wandb``; ``WANDB_MODE=offline`` honoured, files under ``RUN_DIR/wandb``) and
MLflow (``mlflow``; ``MLFLOW_TRACKING_URI`` honoured, else MLflow's file store in ``RUN_DIR/mlruns``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from ..config import Config, config_to_dict
from ..errors import ConfigError
from ..jsonable import flatten
from ..safefiles import atomic_write_text

log = logging.getLogger("ulfine.engine")


def attach_file_log(run_dir: Path) -> logging.Handler:
    """Mirror the ``ulfine`` logger into RUN_DIR/train.log."""
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ulfine")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


#: the package each tracker of ``train.log_with`` needs, and the extra that installs it
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _kept(line: str, step: int) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and entry.get("step", 0) <= step and not entry.get("final")


def check_trackers(names: Sequence[str]) -> None:
    """Fail before any work starts when a tracker's package is not installed."""
    for name in names:
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.log_with={name} needs the {package} package: pip install 'ulfine[{name}]'")


def _flat_config(cfg: Config) -> dict[str, Any]:
    """The config as flat ``section.key`` -> scalar (lists as strings), for trackers."""
    return {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
            for k, v in flatten(config_to_dict(cfg)).items()}


def make_tracker(name: str, run_dir: Path, resume_step: int) -> GeneralTracker:
    """An Accelerate tracker writing next to the run (or where the tracker's environment says)."""
    if name == "tensorboard":
        # purge_step drops TensorBoard events logged after the resumed checkpoint's step
        return TensorBoardTracker("tb", run_dir, purge_step=resume_step or None)
    if name == "wandb":
        # one W&B run per run folder, continued on resume (WANDB_MODE=offline writes only locally)
        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        return WandBTracker(os.environ.get("WANDB_PROJECT", "ulfine"), name=run_dir.name, id=run_id,
                            resume="allow", dir=str(run_dir))
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow  # only here: an optional extra

        # offline default: MLflow's file store inside the run folder (MLflow 3 asks for the opt-in)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
    return MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", "ulfine"), run_name=run_dir.name)


def start_trackers(names: Sequence[str], run_dir: Path, resume_step: int, cfg: Config | None) -> list[GeneralTracker]:
    """Started trackers; TensorBoard failing is a warning (the default must never stop a run),
    a tracker the user asked for failing is an error."""
    trackers = []
    for name in names:
        try:
            tracker = make_tracker(name, run_dir, resume_step)
            tracker.start()
            if cfg is not None and name != "tensorboard":  # config.yaml is beside tb/ already
                tracker.store_init_configuration(_flat_config(cfg))
        except Exception as exc:
            if name == "tensorboard":
                log.warning("TensorBoard disabled: %s", exc)
                continue
            raise ConfigError(f"train.log_with={name}: the tracker did not start ({type(exc).__name__}: "
                              f"{exc}); for offline logging see docs/engine.md") from exc
        trackers.append(tracker)
    return trackers


class Reporter:
    """Tracker scalars, metrics.jsonl lines and the progress bar of the main process."""

    def __init__(self, run_dir: Path, enabled: bool, progress: bool, total: int, initial: int,
                 cfg: Config | None = None) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.trackers: list[GeneralTracker] = []
        self.bar = None
        self.last_entry: dict[str, Any] | None = None
        if not enabled:
            return
        if initial > 0:  # resumed: what was logged after the checkpoint is about to be redone
            self._rewind_metrics(initial)
        names = cfg.train.log_with if cfg is not None else ["tensorboard"]
        self.trackers = start_trackers(names, run_dir, initial, cfg)
        if progress:
            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def _rewind_metrics(self, step: int) -> None:
        """Keep only the metrics.jsonl evaluations made up to ``step`` (the resumed checkpoint);
        a line torn by a kill mid-write is dropped. Rewritten atomically."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if _kept(line, step)]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """``prefix/key`` scalars (numbers only) to every tracker."""
        numbers = {f"{prefix}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not numbers:
            return
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def evaluation(self, entry: dict[str, Any]) -> None:
        """Append one evaluation to metrics.jsonl and the trackers."""
        if not self.enabled:
            return
        self.last_entry = entry
        with (self.run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        step = entry["step"]
        self.scalars("test", {k: entry[k] for k in ("overall_acc", "balanced_acc", "ece")}, step)
        self.scalars("test_group", entry["group_acc"], step)
        if entry.get("val"):
            self.scalars("val", {k: entry["val"][k] for k in ("overall_acc", "balanced_acc")}, step)
        pl = entry.get("pseudo_labels")
        if pl:
            self.scalars("pseudo", {k: pl[k] for k in ("mask_rate", "precision", "recall")}, step)

    def progress(self, n: int, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """The final model's table (its last evaluation) under ``final/*``; trackers finished."""
        if self.bar is not None:
            self.bar.close()
        if self.last_entry is not None:
            e = self.last_entry
            table = {k: e[k] for k in ("overall_acc", "balanced_acc", "ece")}
            table.update({f"{g}_acc": v for g, v in e["group_acc"].items()})
            self.scalars("final", table, e["step"])
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def print_summary(final: dict[str, Any], run_dir: Path) -> None:
    """One-screen rich table of the final metrics."""
    table = Table(title=f"ulfine run {run_dir.name}", show_header=True)
    table.add_column("metric")
    table.add_column("final model", justify="right")
    table.add_column(f"mean of last {final.get('last_k_mean', {}) and final['last_k_mean']['k']}",
                     justify="right")
    last = final.get("last_k_mean") or {}
    table.add_row("overall acc (%)", _pct(final["overall_acc"]), _pct(last.get("overall_acc")))
    table.add_row("balanced acc (%)", _pct(final["balanced_acc"]), _pct(last.get("balanced_acc")))
    for g in ("head", "medium", "tail"):
        table.add_row(f"{g} acc (%)", _pct(final["group_acc"][g]),
                      _pct((last.get("group_acc") or {}).get(g)))
    table.add_row("ECE (%)", _pct(final["ece"]), "")
    pl = final.get("pseudo_labels")
    if pl:
        table.add_row("pseudo-label mask rate (%)", _pct(pl["mask_rate"]), "")
        table.add_row("pseudo-label precision (%)", _pct(pl["precision"]), "")
    sel = final.get("selected_on_val")
    if sel:
        table.add_row("test acc at best val (%)", _pct(sel["test"]["overall_acc"]), f"step {sel['step']}")
    table.add_row("trainable params", f"{final['trainable_params']:,}", "")
    table.add_row("train time (s)", f"{final['train_seconds']:.1f}", "")
    table.caption = f"group rule: {final['group_rule']['text']}; results in {run_dir}"
    Console().print(table)


__all__ = ["TRACKER_PACKAGES", "Reporter", "attach_file_log", "check_trackers", "make_tracker",
           "print_summary", "start_trackers"]
