"""PAF state under two processes (gloo, CPU) equals one process on the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from test_ulfine_method import _batch, _method

        from ulfine.engine.runtime import TorchCollectives
        from ulfine.methods import Batch

        m = _method("ulfine", "ulfine.beta=0.5", "ulfine.mu_paf=0.5")
        m.ctx.collectives = TorchCollectives()  # what the engine gives a method on several processes
        b = _batch()
        # rank r gets labeled rows [2r, 2r+2) and unlabeled rows [3r, 3r+3)
        part = Batch(b.x_l[2 * rank:2 * rank + 2], b.y_l[2 * rank:2 * rank + 2],
                        b.u_w[3 * rank:3 * rank + 3], b.u_s[3 * rank:3 * rank + 3],
                        b.idx_u[3 * rank:3 * rank + 3])
        m.training_step(part)
        m.after_optimizer_step(0)
        torch.save({k: v for k, v in m.state_dict().items() if not k.startswith("backbone")},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down (a lone teardown can abort)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_two_processes_keep_identical_paf_state(tmp_path, monkeypatch):
    here = os.path.dirname(__file__)
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))

    from test_ulfine_method import _batch, _method

    single = _method("ulfine", "ulfine.beta=0.5", "ulfine.mu_paf=0.5")
    single.training_step(_batch())
    single.after_optimizer_step(0)
    ref = {k: v for k, v in single.state_dict().items() if not k.startswith("backbone")}
    for key in ("memory_label", "memory_conf", "alpha"):
        assert torch.equal(r0[key], r1[key]), key
        torch.testing.assert_close(r0[key], ref[key])
    for key in ("visual_prototypes", "prototype_head.prototypes"):
        assert torch.equal(r0[key], r1[key]), key
        torch.testing.assert_close(r0[key], ref[key])
    assert (ref["memory_label"] >= 0).sum() > 0 and ref["alpha"].max() == 0.5
