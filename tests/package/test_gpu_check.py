"""The GPU check is ready to run the day a GPU is lent: every part runs at toy sizes on the CPU
(``--smoke``), writes its JSON, and the real run refuses a machine without CUDA."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")


def _run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=os.path.join(REPO, "benchmarks"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check would run")
def test_the_real_check_needs_cuda(tmp_path):
    done = _run("--out", str(tmp_path))
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--smoke" in done.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_every_part_runs_at_toy_sizes(tmp_path):
    done = _run("--smoke", "--parts", "flash", "steps", "plan", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert report["smoke"] and "machine" in report
    assert parts["flash"]["status"] in ("ok", "skipped")
    steps = parts["steps"]
    assert steps["status"] == "ok" and len(steps["losses_cuda"]) == steps["steps"] == 2
    # the smoke run puts both runs on the CPU: the comparison must then find them equal
    assert steps["losses_cuda"] == steps["losses_cpu"] and steps["first_step_gradient"]["rel_err"] == 0
    plan = parts["plan"]
    assert plan["status"] == "ok" and [r["decoder_recompute"] for r in plan["rows"]] == [False, True]
    for row in plan["rows"]:  # the planner's estimate against its own CPU measurement of the step
        assert 0.9 < row["planned_over_measured"] < 1.2
