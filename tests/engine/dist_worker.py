"""Run one tiny training under torchrun (used by test_distributed.py): argv = out_dir overrides..."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from tiny import tiny_config  # noqa: E402

from ulfine.engine import train  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    train(tiny_config(out, *sys.argv[2:]))
