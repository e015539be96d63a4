"""The ``ulfine`` command line: presets, splits, train, eval, report, compare, export, predict, push,
demo, pretrain-micro.

Heavy imports (torch, open_clip) happen inside the commands, so ``--help`` answers at once.
Every user-facing failure is a :class:`~ulfine.errors.UlfineError` and is printed as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UlfineError


# ----------------------------------------------------------------------------------- helpers
def _console() -> Any:
    from rich.console import Console

    return Console()


def _preset_epilog() -> str:
    from .config import list_presets

    presets = list_presets()
    if not presets:
        return "No presets found."
    width = max(len(name) for name in presets)
    lines = [f"  {name:<{width}}  {desc}" for name, desc in presets.items()]
    return "presets (configs/presets/):\n" + "\n".join(lines)


def _override_help() -> str:
    return textwrap.dedent(
        """\
        overrides are dotted key=value pairs validated against the config schema, e.g.
          method=ulfine finetune=lft peft=adaptformer model.pretrained=openai
          data.root=/datasets output_dir=runs/exp1 seed=1 ssl.tau=0.95 train.epochs=10
        """
    )


# ---------------------------------------------------------------------------------- commands
def cmd_presets(args: argparse.Namespace) -> int:
    """List presets with their one-line descriptions: a table on a terminal; full names, one line
    each, when piped (``ulfine presets | grep cifar``) or with ``--names``."""
    from .config import list_presets, preset_dir

    presets = list_presets()
    if args.names:
        print("\n".join(presets))
        return 0
    if not sys.stdout.isatty():  # a table cut to 80 columns would shorten names with "…"
        print(_preset_lines(presets))
        print(_registered_text(), end="")
        return 0
    from rich.table import Table

    table = Table(title=f"presets in {preset_dir()}")
    table.add_column("preset", style="bold", overflow="fold")
    table.add_column("description")
    for name, desc in presets.items():
        table.add_row(name, desc)
    console = _console()
    console.print(table)
    console.print(_registered_text(), highlight=False, soft_wrap=True)
    return 0


def _preset_lines(presets: dict[str, str]) -> str:
    """One ``name  description`` line per preset, names padded to one column, nothing cut."""
    width = max((len(name) for name in presets), default=0)
    return "\n".join(f"{name:<{width}}  {desc}" for name, desc in presets.items())


def _split_counts(cfg: Any) -> dict[str, Any]:
    from .data import plan_counts

    plan = plan_counts(cfg.data)
    return {"classes": list(plan.classes), "labeled": list(plan.labeled),
            "unlabeled": None if plan.unlabeled is None else list(plan.unlabeled)}


def cmd_splits(args: argparse.Namespace) -> int:
    """Per-class labeled/unlabeled counts of a preset, planned (and realised if data exists)."""
    from .config import load_config

    cfg = load_config(args.preset, _with_plugins(args, args.overrides))
    counts = _split_counts(cfg)
    if args.json:
        print(json.dumps(counts))
        return 0

    from rich.table import Table

    realised = None
    note = ""
    if not args.no_data:
        from .data import build_ssl_data, realised_counts
        from .errors import DataError

        try:
            realised = realised_counts(build_ssl_data(cfg.data, cfg.seed))
        except DataError as exc:
            note = f"realised split not shown: {exc}"

    d = cfg.data
    title = (f"{cfg.preset or d.dataset}: dataset={d.dataset} N1={d.num_labeled_head} "
             f"M1={d.num_unlabeled_head} gamma_l={d.imbalance_labeled:g} "
             f"gamma_u={d.imbalance_unlabeled:g} order={d.unlabeled_order}")
    table = Table(title=title)
    table.add_column("k", justify="right")
    table.add_column("class")
    table.add_column("labeled", justify="right")
    table.add_column("unlabeled", justify="right")
    if realised is not None:
        table.add_column("realised labeled", justify="right")
        table.add_column("realised unlabeled*", justify="right")
    unl = counts["unlabeled"]
    for k, name in enumerate(counts["classes"]):
        row = [str(k), name, str(counts["labeled"][k]), "natural" if unl is None else str(unl[k])]
        if realised is not None:
            row += [str(realised["labeled"][k]), str(realised["unlabeled"][k])]
        table.add_row(*row)
    total_u = "natural set" if unl is None else str(sum(unl))
    table.caption = f"total labeled {sum(counts['labeled'])}, unlabeled {total_u}"
    if realised is not None:
        table.caption += "  (*unlabeled ground truth, shown for diagnostics only)"
    console = _console()
    console.print(table)
    if note:
        console.print(f"[dim]{note}[/dim]")
    return 0


def _with_plugins(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """``--plugin`` modules become the config's ``plugins`` key, so the run folder records them
    and ``ulfine eval`` re-imports them."""
    plugins = list(getattr(args, "plugin", None) or [])
    return [f"plugins={json.dumps(plugins)}", *overrides] if plugins else list(overrides)


def _registered_text() -> str:
    """The registered methods (with their options sections), fine-tuning modes, PEFT modules and
    datasets, plugins included."""
    from .registry import DATASETS, FINETUNE_MODES, METHODS, PEFT_MODULES, load_builtins

    load_builtins()
    opts = METHODS.options()
    methods = [f"{m} ({m}.*)" if m in opts else m for m in METHODS.names()]
    return ("registered (plugins included):\n"
            f"  method=    {', '.join(methods)}\n"
            f"  finetune=  {', '.join(FINETUNE_MODES.names())}\n"
            f"  peft=      {', '.join(PEFT_MODULES.names())}\n"
            f"  data.dataset= {', '.join(DATASETS.names())}\n")


def _train_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(preset, overrides) of ``ulfine train``: the preset is optional (a ``key=value`` in its
    place is an override) and ``--data PATH`` means the ``folder`` preset on PATH."""
    preset, overrides = args.preset, list(args.overrides)
    if preset is not None and "=" in preset:
        preset, overrides = None, [preset, *overrides]
    if args.data is not None:
        preset = preset or "folder"
        overrides = [f"data.root={args.data}", *overrides]
    return preset, overrides


def _is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch job (or a plain process)."""
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace) -> int:
    """Train a method on a preset; writes a run folder and its report."""
    from .apps.report import write_report
    from .config import load_config
    from .engine import train

    preset, overrides = _train_args(args)
    cfg = load_config(preset, _with_plugins(args, overrides), budget=args.budget)
    if cfg.resume and args.trust_plugins and cfg.output_dir is not None:
        from .engine.reevaluate import trust_folder_plugins

        trust_folder_plugins(Path(cfg.output_dir))  # the user consented to the run folder's plugins
    run_dir = train(cfg)
    if _is_main_process() and not args.no_report:
        try:
            report = write_report(run_dir)
            print(f"report: {report.folder / 'report.md'}")
        except Exception as exc:  # the run is complete; a plotting failure must not hide it
            print(f"warning: report not written ({type(exc).__name__}: {exc}); try `ulfine report {run_dir}`",
                  file=sys.stderr)
    print(f"run folder: {run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Re-evaluate a finished run on its test (or validation) split."""
    from .engine import evaluate_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UlfineError(f"run folder {run_dir} does not exist")
    overrides = [*args.overrides, *([f"data.root={args.data_root}"] if args.data_root else [])]
    metrics = evaluate_run(run_dir, split=args.split, overrides=overrides, trust_plugins=args.trust_plugins)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        g = metrics.get("group_acc", {})
        print(f"{args.split}: overall {metrics['overall_acc']:.4f}  balanced "
              f"{metrics['balanced_acc']:.4f}  head {g.get('head', float('nan')):.4f}  medium "
              f"{g.get('medium', float('nan')):.4f}  tail {g.get('tail', float('nan')):.4f}  "
              f"ece {metrics['ece']:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Plots and report.md of a finished run."""
    from .apps.report import write_report

    report = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    for name, reason in report.skipped.items():
        print(f"{name}: not drawn ({reason})")
    print(f"report: {report.folder / 'report.md'} ({len(report.plots)} plots)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """A paper-style table of finished runs (mean ± std over seeds)."""
    from .apps.run_table import compare_runs

    comparison = compare_runs([Path(d) for d in args.run_dirs], by=args.by)
    print(comparison.text())
    if args.out:
        out = Path(args.out)
        out.write_text(comparison.csv if out.suffix.lower() == ".csv" else comparison.text())
        print(f"written to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A self-contained model folder (+ ONNX) from a finished run."""
    from .apps.model_io import export_model
    from .engine.reevaluate import trust_folder_plugins

    if args.trust_plugins:
        trust_folder_plugins(Path(args.run_dir))  # consent given for this run folder's plugins
    result = export_model(Path(args.run_dir), Path(args.out), include_backbone=args.include_backbone,
                          overrides=args.overrides, onnx=args.onnx, license=args.license)
    print(f"model folder: {result.model_dir} ({', '.join(result.files)})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Top-k classes of image files with a model folder or a run folder."""
    from .apps.model_io import load
    from .apps.predict import check_out, list_files, predict_files, write_results

    if args.topk < 1 or args.batch_size < 1:
        raise UlfineError("--topk and --batch-size must be at least 1")
    out = check_out(Path(args.out))  # before any work: an hour of predictions must not die at the end
    files = list_files(args.paths)
    model = args.model if args.model.startswith("hf-hub:") else Path(args.model)
    classifier = load(model, device=args.device, trust_plugins=args.trust_plugins,
                      data_root=args.data_root)
    topk = min(args.topk, len(classifier.class_names))
    results = predict_files(classifier, files, topk=topk, batch_size=args.batch_size)
    fmt = args.format or ("json" if args.out.lower().endswith(".json") else "csv")
    write_results(results, out, fmt, topk)
    failed = sum(r.error is not None for r in results)
    print(f"{len(results) - failed} images predicted, {failed} unreadable (listed with an error); "
          f"written to {args.out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a model folder to the Hugging Face Hub as one commit."""
    from .apps.hub import push_model

    url = push_model(Path(args.model_dir), args.repo_id, private=args.private, revision=args.revision,
                     token=args.token)
    print(f"pushed {args.model_dir} to {args.repo_id}: {url}")
    print(f"load it with ulfine.load(\"hf-hub:{args.repo_id}\") or `ulfine predict hf-hub:{args.repo_id} ...`")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the offline demo on the micro world and print the comparison table."""
    from .apps.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def cmd_pretrain_micro(args: argparse.Namespace) -> int:
    """Pretrain the tiny CLIP on the procedural captioned-image world."""
    from .microworld.pretrain import pretrain

    path = pretrain(Path(args.out), steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                    threads=args.threads)
    print(f"weights written to {path}")
    return 0


# ------------------------------------------------------------------------------------ parser
FMT = argparse.RawDescriptionHelpFormatter
Subparsers = Any  # argparse's private _SubParsersAction


def _add_preset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help="preset name (see `ulfine presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def _add_config_commands(sub: Subparsers) -> None:
    """``presets``, ``splits`` and ``train``: the commands that read a preset."""
    p = sub.add_parser("presets", help="list the configuration presets",
                       description="List the presets under configs/presets/ and what is registered: a table "
                       "on a terminal, one `name  description` line per preset when piped.")
    p.add_argument("--names", action="store_true", help="print only the preset names, one a line (for scripts)")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "splits", help="per-class labeled/unlabeled counts of a preset", formatter_class=FMT,
        description="Per-class labeled and unlabeled counts, head to tail. Counts need no "
        "dataset on disk; when the dataset is present the realised split is shown too.",
        epilog=_override_help(),
    )
    _add_preset_args(p)
    p.add_argument("--json", action="store_true",
                   help='print exactly {"classes": [...], "labeled": [...], "unlabeled": [...]}')
    p.add_argument("--no-data", action="store_true", help="do not look for the dataset on disk")
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser(
        "train", help="train a method on a preset (or on your image folder: --data PATH)", formatter_class=FMT,
        description="Train METHOD (method=...) with a fine-tuning strategy (finetune=lp|lft|fft, "
        "peft=adaptformer|vpt|lora|bitfit) on PRESET. Writes config.yaml, split.json, "
        "checkpoints, tracker logs (TensorBoard), metrics.jsonl, final_metrics.json and report/ to the "
        "run folder. `ulfine train --data PATH` trains the `folder` preset on your own images "
        "(PATH/labeled/<class>/, optional PATH/unlabeled/ and PATH/test/<class>/).",
        epilog=_override_help() + "\n" + _preset_epilog(),
    )
    p.add_argument("preset", nargs="?", help="preset name (see `ulfine presets`) or a YAML file; optional")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--data", metavar="PATH", help="your image folder: the `folder` preset with data.root=PATH")
    p.add_argument("--budget", type=float, default=None, metavar="FRACTION",
                   help="train on this fraction of the preset's epochs x steps (e.g. 0.001 for a "
                   "smoke run of a 250k-step scratch preset); the run records the shortened budget")
    p.add_argument("--no-report", action="store_true",
                   help="skip the plots and report.md (grids of many runs; `ulfine report RUN_DIR` "
                   "writes them later)")
    _add_trust_arg(p, "with resume=true: import the plugins the run folder's config.yaml names")
    p.set_defaults(func=cmd_train)
    plain_help = p.format_help
    p.format_help = lambda: plain_help() + "\n" + _registered_text()  # registries load only for help


def _add_result_commands(sub: Subparsers) -> None:
    """``eval``, ``report`` and ``compare``: read finished run folders."""
    p = sub.add_parser("eval", help="re-evaluate a finished run",
                       description="Reload RUN_DIR's config and weights and evaluate them. "
                       "Overrides may change only where and how it runs: train.device, "
                       "train.precision, data.root, data.num_workers, eval.batch_size, cache.*.")
    p.add_argument("run_dir", help="a run folder written by `ulfine train`")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. train.device=cpu data.root=/datasets")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    _add_data_root_arg(p)
    _add_trust_arg(p, "import the plugins RUN_DIR/config.yaml names")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="plots and report.md of a finished run",
                       description="Per-class accuracy (head to tail), pseudo-label precision/recall over "
                       "training, reliability diagram, confusion matrix (K <= 30), ULFine's prototype drift, "
                       "and report.md with the metrics; written to RUN_DIR/report/ (also after every train).")
    p.add_argument("run_dir", help="a run folder written by `ulfine train`")
    p.add_argument("--out", help="report folder (default RUN_DIR/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="a paper-style table of finished runs",
                       description="Rows methods, columns settings (--by preset); cells overall / tail accuracy "
                       "of the final model, mean ± std over seeds, with a note on cells whose runs differ in more "
                       "than the seed.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--by", choices=["preset", "method", "seed"], default="preset",
                   help="what the columns are (default preset)")
    p.add_argument("--out", help="also write the table: .md (Markdown) or .csv (one line per cell, raw numbers)")
    p.set_defaults(func=cmd_compare)


def _add_trust_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--trust-plugins``: consent to import code a folder's config names (as trust_remote_code)."""
    p.add_argument("--trust-plugins", action="store_true",
                   help=f"{what} (Python code that runs when imported); only for folders you trust. "
                   "Without it such a folder is refused (plugins named with --plugin are always trusted)")


def _add_data_root_arg(p: argparse.ArgumentParser) -> None:
    """``--data-root``: where a run folder's data is now (the same as ``data.root=PATH``)."""
    p.add_argument("--data-root", metavar="PATH",
                   help="where the run's data is now, when it moved or the run came from another machine "
                   "(same as data.root=PATH; a model folder needs no data)")


def _add_model_commands(sub: Subparsers) -> None:
    """``export``, ``predict`` and ``push``: use and share a trained model."""
    p = sub.add_parser("export", help="a self-contained model folder from a finished run",
                       description="Write MODEL_DIR with model.safetensors (trained tensors, fp32), config.json "
                       "(classes, preprocessing, backbone reference + fingerprint) and a README.md model card; "
                       "the frozen CLIP weights are referenced unless --include-backbone. The run's data is "
                       "re-read (its split is checked); overrides as for `ulfine eval` (e.g. data.root=...).")
    p.add_argument("run_dir", help="a run folder written by `ulfine train`")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=/datasets")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model folder to write")
    p.add_argument("--include-backbone", action="store_true", help="copy the frozen CLIP weights (air-gapped use)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx, checked against PyTorch "
                   "(needs pip install 'ulfine[onnx]')")
    p.add_argument("--license", metavar="SPDX-ID", help="the model's license in the card's Hub metadata "
                   "(e.g. apache-2.0; default: other, with a note that the weights' and data's terms apply)")
    _add_trust_arg(p, "import the plugins RUN_DIR/config.yaml names")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top-k classes of images with a model or run folder",
                       description="Predict every image file named and every file under the folders named "
                       "(recursively). CSV columns: filename, label_1..k, prob_1..k, error; a file that is not a "
                       "readable image gets a warning and a row with its error.")
    p.add_argument("model", help="a model folder (`ulfine export`), a run folder (`ulfine train`) or a model on "
                   "the Hugging Face Hub, hf-hub:org/name[@revision] (from the Hub cache; downloaded when online)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--out", default="predictions.csv", help="output file (default predictions.csv)")
    p.add_argument("--format", choices=["csv", "json"], help="default: from --out's suffix, else csv")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _add_data_root_arg(p)
    _add_trust_arg(p, "import the plugins the model or run folder's config names")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("push", help="upload a model folder to the Hugging Face Hub",
                       description="Upload MODEL_DIR (an `ulfine export` model folder) to REPO_ID as one commit; "
                       "the repository is created when new. Needs a token (--token, HF_TOKEN or `hf auth login`) "
                       "and downloads on (not HF_HUB_OFFLINE=1). Load it back with hf-hub:REPO_ID.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder written by `ulfine export`")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, org/name")
    p.add_argument("--private", action="store_true", help="create the repository private (when it is new)")
    p.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main when new)")
    p.add_argument("--token", help="a Hub token with write access (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=cmd_push)


def _add_run_commands(sub: Subparsers) -> None:
    """``demo`` and ``pretrain-micro``."""
    p = sub.add_parser(
        "demo", help="offline demo: zero-shot vs LP/LFT/FFT FixMatch vs ULFine on the micro world",
        description="Loads the shipped micro-CLIP weights and compares methods on the micro-world "
        "long-tailed task; prints a table and writes a report folder.",
    )
    p.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "pretrain-micro", help="pretrain the tiny CLIP on the procedural captioned-image world",
        description="Contrastive pretraining of the ulfine-micro-vit architecture; writes "
        "safetensors weights usable as model.pretrained=<file>.",
    )
    p.add_argument("--out", default="runs/micro_clip.safetensors", help="output weights file")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: as shipped)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: as shipped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (the shipped file was made with 1; results depend on it)")
    p.set_defaults(func=cmd_pretrain_micro)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ulfine",
        description="Foundation-model-assisted long-tailed semi-supervised learning: ULFine and "
        "its baselines on CLIP.",
        formatter_class=FMT,
    )
    parser.add_argument("--version", action="version", version=f"ulfine {__version__}")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE (dotted name or .py file) first: it may register methods, datasets and "
        "PEFT modules (repeatable; see docs/extending.md)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_config_commands(sub)
    _add_result_commands(sub)
    _add_model_commands(sub)
    _add_run_commands(sub)
    return parser


def _plugin_names(argv: list[str]) -> list[str]:
    """The values of ``--plugin X`` / ``--plugin=X`` in ``argv``."""
    names = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--plugin"]
    return names + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--plugin=")]


def _preload_plugins(argv: list[str]) -> None:
    """Import ``--plugin`` modules before the parser is built, so ``train --help`` lists what
    they register."""
    from .registry import load_plugin

    for name in _plugin_names(argv):
        load_plugin(name)


class _ConsoleHandler(logging.StreamHandler):
    """The ``ulfine`` logger's own console handler (``warning: ...`` on stderr), so a warning
    reaches the terminal whether or not a library configured logging; a warning repeated word
    for word (the same dataset read twice by one command) is shown once."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)
        self._shown: set[str] = set()

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if line not in self._shown:
            self._shown.add(line)
            super().emit(record)


@contextmanager
def console_logging() -> Iterator[None]:
    """Show ulfine's warnings on stderr, each once, for the duration of a command.

    Why: ulfine logs to the ``ulfine`` logger, which has no handler of its own; its warnings
    reached the terminal only when open_clip happened to call ``logging.basicConfig`` (and then
    formatted as ``WARNING:ulfine.data:...``). The CLI adds its own handler and stops propagation
    to the root logger meanwhile, so a root handler added by a library never prints a line twice;
    both are undone afterwards (``main`` is also called in-process, by tests and scripts).
    """
    logger = logging.getLogger("ulfine")
    handler, propagate = _ConsoleHandler(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ulfine`` console script."""
    with console_logging():
        return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    """:func:`main` inside :func:`console_logging`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _preload_plugins(argv)
    except UlfineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value after an option (`splits P --json a=b`): argparse leaves it over
        if not hasattr(args, "overrides") or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except UlfineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `ulfine splits ... --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
