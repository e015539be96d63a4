"""Train test_kill.py's tiny run in this process, resuming when its folder holds a checkpoint (what
a user does after a crash): argv = out_dir overrides... Prints ``ready`` once the imports are done."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from tiny import tiny_config  # noqa: E402

from ulfine.engine import train  # noqa: E402
from ulfine.engine.checkpoint import find_checkpoint  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    run = out / "run"
    resume = find_checkpoint(run) is not None or (run / "final_metrics.json").is_file()
    cfg = tiny_config(out, *sys.argv[2:], *(["resume=true"] if resume else []))
    print("ready", flush=True)
    train(cfg)
