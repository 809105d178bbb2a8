"""Two "nodes" of one rank each on this machine (torchrun --nnodes 2, one process per node, the
nodes joined through a rendezvous on localhost) train exactly like one node of two ranks through
the deepspeed launcher: the same losses, step for step."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, free_port, launcher_env

pytestmark = pytest.mark.slow


def _losses(out: str) -> dict[int, float]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_two_nodes_of_one_rank_equal_one_node_of_two(run_config, tmp_path):
    from test_train_e2e import launch

    config, _ = run_config
    steps = ["steps=4", "save_every=0"]
    single = str(tmp_path / "one_node")
    launch(config, single, *steps)
    out = str(tmp_path / "two_nodes")
    port = free_port()
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    nodes = [subprocess.Popen([torchrun, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "uio_ds.train",
                               "--config", config, "--deepspeed", "zero2", "--set", f"output_dir={out}", *steps],
                              env=launcher_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[-3000:] for o in outputs)
    assert "2 rank(s)" in outputs[0]
    assert _losses(out) == _losses(single)
    assert os.path.isdir(os.path.join(out, "final"))
