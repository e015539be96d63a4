"""ulfine's warnings reach the terminal by themselves, each once: the CLI gives the ``ulfine`` logger
its own console handler instead of relying on open_clip calling ``logging.basicConfig``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ulfine.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
WARNING = "left out 1 unreadable image file(s)"


def _folder(root: Path) -> Path:
    for name in ("cat", "dog"):
        for i in range(2):
            (root / "labeled" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 6, 3), 60 * i, np.uint8)).save(root / "labeled" / name / f"{i}.png")
    (root / "labeled" / "cat" / "broken.png").write_bytes(b"not an image")
    return root


def _splits(root: Path) -> list[str]:
    return ["splits", "folder", f"data.root={root}", "data.on_bad_image=skip", "data.image_size=8"]


def test_a_warning_reaches_stderr_without_any_logging_setup(tmp_path, capsys):
    assert main(_splits(_folder(tmp_path / "data"))) == 0
    err = capsys.readouterr().err
    assert err.count(WARNING) == 1 and f"warning: folder: {WARNING}" in err, err
    logger = logging.getLogger("ulfine")
    assert logger.propagate and not any(type(h).__name__ == "_ConsoleHandler" for h in logger.handlers)  # undone


def test_no_line_twice_when_a_library_configured_logging(tmp_path):
    """open_clip's ``logging.info`` calls ``basicConfig`` on the root logger: still one line."""
    code = ("import logging, sys\nlogging.basicConfig(level=logging.INFO)\nfrom ulfine.cli import main\n"
            f"sys.exit(main({_splits(_folder(tmp_path / 'data'))!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count(WARNING) == 1, done.stderr
