"""Run tiny trainings under torchrun (used by test_distributed.py), one after the other in the same
processes: argv = out_dir overrides... [-- overrides... ...]; run i is written to out_dir/r<i>/run."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from tiny import tiny_config  # noqa: E402

from ulfine.engine import train  # noqa: E402

if __name__ == "__main__":
    out, groups = Path(sys.argv[1]), [[]]
    for arg in sys.argv[2:]:
        if arg == "--":
            groups.append([])
        else:
            groups[-1].append(arg)
    for i, overrides in enumerate(groups):
        train(tiny_config(out / f"r{i}", *overrides))
    if torch.distributed.is_initialized():
        # both ranks done before either tears gloo down: a lone teardown can abort the other rank
        # ("terminate called without an active exception", seen once in CI), failing a finished run
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
