"""The recipes' DeepSpeed launch (launch/recipes/common.sh): 2 CPU ranks, or one rank per GPU
reading as many documents a step as the recipe's 2 ranks do."""

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO


def launch(tmp_path, ranks: int, *overrides: str) -> subprocess.CompletedProcess:
    """The command ds_train runs (the launcher replaced by echo) with RANKS=ranks."""
    script = 'set -euo pipefail; source launch/recipes/common.sh; ds_train launch/configs/smollm2_levers.json "$@"'
    env = dict(os.environ, OUT=str(tmp_path / "out"), RESULTS=str(tmp_path / "results"), RECIPE="test",
               RANKS=str(ranks), ACCELERATOR="cuda", DEEPSPEED="echo", PY=sys.executable, PYTHONPATH=REPO)
    return subprocess.run(["bash", "-c", script, "ds_train", str(tmp_path / "run"), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def documents_per_rank(command: str) -> list[int]:
    return [int(v) for v in re.findall(r"data\.documents_per_step=(\d+)", command)]


@pytest.mark.parametrize("ranks, per_rank", [(1, 4), (4, 1)])
def test_each_step_reads_the_documents_of_two_ranks(tmp_path, ranks, per_rank):
    done = launch(tmp_path, ranks, "steps=3", "data.documents_per_step=2")
    assert done.returncode == 0, done.stderr
    assert f"--num_gpus {ranks} " in done.stdout
    # the last override wins: 2 ranks x 2 documents, shared by `ranks` ranks
    assert documents_per_rank(done.stdout)[-1] == per_rank


def test_two_ranks_run_the_recipe_as_written(tmp_path):
    done = launch(tmp_path, 2, "steps=3")
    assert done.returncode == 0 and "--num_gpus 2 " in done.stdout and documents_per_rank(done.stdout) == []


def test_ranks_that_cannot_share_a_step_are_refused(tmp_path):
    done = launch(tmp_path, 3, "steps=3")
    assert done.returncode != 0 and "--num_gpus" not in done.stdout  # refused before the launcher
    assert "RANKS=3: a step of this recipe reads 2 documents" in done.stderr


def test_launched_scripts_import_the_recipes_own_checkout(tmp_path):
    # another uio_ds first on the path (as an editable install of another clone would be): a script a
    # recipe runs from its worktree must still import the worktree's
    (tmp_path / "other" / "uio_ds").mkdir(parents=True)
    (tmp_path / "other" / "uio_ds" / "__init__.py").write_text("")
    (tmp_path / "which.py").write_text("import os, uio_ds\nprint(os.path.dirname(os.path.dirname(uio_ds.__file__)))\n")
    script = f"set -euo pipefail; source {REPO}/launch/recipes/common.sh; $PY {tmp_path / 'which.py'}"
    env = dict(os.environ, OUT=str(tmp_path / "out"), RESULTS=str(tmp_path / "results"), RECIPE="test",
               ACCELERATOR="cpu", PY=sys.executable, PYTHONPATH=str(tmp_path / "other"))
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.path.realpath(done.stdout.split()[-1]) == os.path.realpath(REPO)
