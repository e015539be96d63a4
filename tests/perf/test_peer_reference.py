"""benchmarks/peer_reference.py: ulfine's step against FineSSL's own code, at a tiny size.

The FineSSL rows need a clone of https://github.com/Gank0078/FineSSL holding the pinned commit
(``ULFINE_FINESSL_REPO``, else the workplace's bare mirror); without one that test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "peer_reference.py"
MIRROR = Path("/work/.mirror/Gank0078+FineSSL/repo")
TINY = ["--width", "64", "--layers", "2", "--head-width", "32", "--image-size", "32", "--patch", "4",
        "--batch", "2", "--mu", "1", "--rounds", "1", "--steps", "1", "--warmup", "0", "--threads", "1"]
ROW = "| ViT-B-16 width=64 layers=2 32px/4 B=2 mu=1 |"


def finessl_clone() -> tuple[Path | None, str]:
    """The clone to use and, when there is none, why."""
    env = os.environ.get("ULFINE_FINESSL_REPO")
    clone = Path(env) if env else MIRROR
    if not clone.exists():
        return None, (f"no FineSSL clone ({'ULFINE_FINESSL_REPO=' + env if env else MIRROR} absent): "
                      "set ULFINE_FINESSL_REPO to a clone of https://github.com/Gank0078/FineSSL")
    import peer_reference

    git_dir = clone / ".git" if (clone / ".git").exists() else clone
    found = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "--verify",
                            f"{peer_reference.FINESSL[1]}^{{commit}}"], capture_output=True)
    if found.returncode:
        return None, f"{clone} lacks FineSSL commit {peer_reference.FINESSL[1]}"
    return clone, ""


def test_without_a_clone_it_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    import peer_reference

    monkeypatch.delenv("ULFINE_FINESSL_REPO", raising=False)
    assert peer_reference.main([]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "git clone https://github.com/Gank0078/FineSSL" in out[0]


def test_pin_matches_the_golden_generators() -> None:
    sys.path.insert(0, str(REPO / "scripts" / "golden"))
    try:
        from peer import PINNED
    finally:
        sys.path.remove(str(REPO / "scripts" / "golden"))
    import peer_reference

    assert peer_reference.FINESSL == PINNED["finessl"]


@pytest.mark.slow
def test_tiny_run_checks_features_and_prints_the_rows() -> None:
    """Five child processes (the check and four steps) on a 64-wide, 2-block, 32 px tower."""
    clone, why = finessl_clone()
    if clone is None:
        pytest.skip(why)
    env = {**os.environ, "ULFINE_FINESSL_REPO": ""}
    run = subprocess.run([sys.executable, str(SCRIPT), "--finessl-repo", str(clone), *TINY],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-2000:]
    out = run.stdout
    assert "features = ulfine's" in out
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("| row | images/s ulfine (layout fix)"))
    for column in ("ulfine (without)", "FineSSL equal work", "FineSSL as published", "ratios", "peak RSS ratio"):
        assert column in header
    assert sum(ln.startswith(ROW) for ln in lines) == 5  # the summary row + four variant rows
    for variant in ("ulfine", "ulfine_no_layout", "finessl_equal", "finessl_published"):
        assert any(ln.startswith(f"{ROW} {variant} |") for ln in lines)
    report = json.loads(out[out.index("\n{") + 1:])
    (row,) = report["rows"]
    check = row["check"]
    assert check["ok"] and check["commit"].startswith("76b6f48")
    assert max(check["max_abs_diff_no_grad"], check["max_abs_diff_grad"]) <= 1e-4 < check["adapter_effect"]
    for name, v in row["variants"].items():
        assert v["images_per_s"] > 0 and v["peak_rss_mib"] >= v["rss_before_mib"] > 0, name
    assert row["variants"]["finessl_published"]["views_per_step"] == "2+2+2+2"
    assert row["variants"]["ulfine"]["views_per_step"] == "2+2(no_grad)+2"


@pytest.mark.slow
def test_tiny_run_in_each_peers_shipped_precision() -> None:
    """The GPU row's precisions, run on the CPU: ulfine under bf16 autocast, FineSSL in its own
    fp16 (its convert_weights); the dtypes its matmuls produced in the timed steps are reported."""
    clone, why = finessl_clone()
    if clone is None:
        pytest.skip(why)
    env = {**os.environ, "ULFINE_FINESSL_REPO": ""}
    run = subprocess.run([sys.executable, str(SCRIPT), "--finessl-repo", str(clone), *TINY,
                          "--precision-ours", "bf16", "--precision-finessl", "fp16"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-2000:]
    out = run.stdout
    report = json.loads(out[out.index("\n{") + 1:])
    assert report["what"].endswith("CPU, ulfine bf16, FineSSL fp16")
    variants = report["rows"][0]["variants"]
    for name, dtype in (("ulfine", "bfloat16"), ("ulfine_no_layout", "bfloat16"),
                        ("finessl_equal", "float16"), ("finessl_published", "float16")):
        assert variants[name]["info"]["mlp_matmul_dtype"] == {"dtype": dtype}, name
    assert report["rows"][0]["check"]["ok"]  # the feature check stays fp32
    assert f"{ROW} finessl_equal | fp16 (float16) | 2+2+2 |" in out


def test_cuda_without_a_gpu_says_so(capsys: pytest.CaptureFixture) -> None:
    import peer_reference
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert peer_reference.main(["--finessl-repo", str(REPO), "--device", "cuda"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().out


def test_a_gpu_row_compares_gpu_memory() -> None:
    """On a GPU the ratio column reads torch.cuda's peak allocation, not the process's RSS."""
    import peer_reference

    def variant(gpu: float) -> dict:
        return {"images_per_s": 10.0, "peak_rss_mib": 1000.0, "rss_before_mib": 900.0, "peak_gpu_mib": gpu,
                "gpu_before_mib": 100.0, "views_per_step": "4+4+4", "median_s": 0.8, "min_s": 0.8, "max_s": 0.8,
                "info": {"precision": "bf16", "mlp_matmul_dtype": {"dtype": "bfloat16"}}}

    spec = {"arch": "ViT-B-16", "image_size": 224, "patch": None, "batch": 4, "mu": 1, "device": "cuda"}
    row = {"spec": spec, "variants": {"ulfine": variant(400.0), "ulfine_no_layout": variant(400.0),
                                      "finessl_equal": variant(1000.0), "finessl_published": variant(1200.0)}}
    text = peer_reference.table([row])
    assert "| peak GPU memory ratio:" in text and "| 2.50 / 3.00 |" in text
    assert "| ViT-B-16 224px B=4 mu=1 cuda | finessl_equal | bf16 (bfloat16) | 4+4+4 |" in text
    assert "| 1000.0 | 100.0 | 900.0 |" in text
