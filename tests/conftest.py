"""Shared test setup: offline, few threads, deterministic; and two guards that fail the suite when
a test breaks the house rules: writing into the working folder (runs/, .cache/, reports/ belong in
tmp_path), or leaving a method, dataset, PEFT module or fine-tuning mode registered."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# hypothesis keeps an example database and a constants cache: outside the working folder
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="ulfine-hypothesis-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from ulfine import registry

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
#: what a run, the caches, the demo and hypothesis write by default, relative to the working folder
DEFAULT_OUTPUTS = ("runs", ".cache", "reports", ".hypothesis")


def written_outputs() -> set[Path]:
    """Entries under the default output folders of the checkout and of the working folder."""
    found: set[Path] = set()
    for base in {ROOT, Path.cwd()}:
        for name in DEFAULT_OUTPUTS:
            top = base / name
            if top.exists():
                found |= {top, *top.glob("*"), *top.glob("*/*")}
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = written_outputs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    new = sorted(written_outputs() - session.config.stash.get(_BEFORE, set()))
    if new:
        shown = ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in new[:5])
        print(f"\nerror: tests wrote into the working folder ({len(new)} new entries: {shown}); pass "
              "output_dir, cache.dir and model.text_cache_dir into tmp_path")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set]()
REGISTRIES = (registry.METHODS, registry.DATASETS, registry.PEFT_MODULES, registry.FINETUNE_MODES)


def registered() -> set[tuple[str, str]]:
    return {(r.kind, name) for r in REGISTRIES for name in r.names()}


@pytest.fixture(autouse=True)
def _nothing_left_registered():
    """A test may register a method or dataset of its own, but must unregister it."""
    registry.load_builtins()
    before = registered()
    yield
    left = sorted(registered() - before)
    if left:
        pytest.fail(f"the test left registered: {left}; unregister it (Registry.unregister) in a fixture")
