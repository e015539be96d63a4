"""Run folder, log file, TensorBoard scalars, progress bar and the end-of-run summary table.

Only the main process writes; the others get no-op reporters.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from ..config import Config
from ..safefiles import atomic_write_text

log = logging.getLogger("ulfine.engine")


def default_run_dir(cfg: Config, now: float | None = None) -> Path:
    """runs/<preset or dataset>-<method>-<finetune>-<YYYYmmdd-HHMMSS>."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = cfg.preset or cfg.data.dataset
    return Path("runs") / f"{name}-{cfg.method}-{cfg.finetune}-{stamp}"


def attach_file_log(run_dir: Path) -> logging.Handler:
    """Mirror the ``ulfine`` logger into RUN_DIR/train.log."""
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ulfine")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def _kept(line: str, step: int) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and entry.get("step", 0) <= step and not entry.get("final")


class Reporter:
    """TensorBoard scalars, metrics.jsonl lines and the progress bar of the main process."""

    def __init__(self, run_dir: Path, enabled: bool, progress: bool, total: int, initial: int) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if initial > 0:  # resumed: what was logged after the checkpoint is about to be redone
            self._rewind_metrics(initial)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops TensorBoard events logged after the checkpoint's step
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=initial or None)
        except Exception as exc:  # tensorboard missing or broken: keep training, say so once
            log.warning("TensorBoard disabled: %s", exc)
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
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def evaluation(self, entry: dict[str, Any]) -> None:
        """Append one evaluation to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
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
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


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


__all__ = ["Reporter", "attach_file_log", "default_run_dir", "print_summary"]
