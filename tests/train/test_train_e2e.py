"""launch/train.py through the real ``deepspeed`` launcher on two CPU ranks: outputs, and kill-and-resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, free_port, launcher_env

from uio_ds.train import checkpoint as ckpt

# every test here starts the deepspeed launcher with two ranks (tens of seconds each)
pytestmark = pytest.mark.slow


def launch(config: str, out: str, *extra: str, background: bool = False, module: bool = False,
           deepspeed: str = "zero2", env: dict | None = None):
    """The deepspeed launcher on 2 CPU ranks, with launch/train.py and a file of ds_configs/ or
    (``module``) ``--module uio_ds.train`` and the bundled DeepSpeed config by name."""
    script = ["--module", "uio_ds.train", "--deepspeed", deepspeed] if module else [
        os.path.join(REPO, "launch", "train.py"), "--deepspeed", os.path.join(REPO, "ds_configs", f"{deepspeed}.json")]
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), *script, "--config", config,
           "--set", f"output_dir={out}", *extra]
    env = dict(launcher_env(), **(env or {}))
    if background:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def losses(out: str) -> dict[int, float]:
    """Loss per step from metrics.jsonl (a step re-run after a resume keeps its last record)."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_training_run_writes_checkpoints_events_and_export(run_config, tmp_path):
    config, _ = run_config
    out = str(tmp_path / "run")
    # a lock file left in torch's extension cache by a build that was killed makes every later JIT
    # build of that op wait forever; training builds no op, so such a leftover cannot stall a run
    extensions = tmp_path / "torch_extensions"
    (extensions / "deepspeed_shm_comm").mkdir(parents=True)
    (extensions / "deepspeed_shm_comm" / "lock").touch()
    proc = launch(config, out, module=True, env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert os.listdir(extensions / "deepspeed_shm_comm") == ["lock"]
    assert "trained UIO parts exported" in proc.stdout + proc.stderr
    # the bad record is summarised on the console, where it is
    assert "skipped 1 bad record(s) (1 not valid JSON); first: " in proc.stdout and "docs.jsonl:25" in proc.stdout
    checkpoints = os.path.join(out, "checkpoints")
    assert ckpt.complete_tags(checkpoints) == ["step00000004"]  # keep_last=1 removed step 2
    assert ckpt.latest_tag(checkpoints) == "step00000004"
    files = os.listdir(os.path.join(checkpoints, "step00000004"))
    assert any("optim_states" in f for f in files) and "trainer_state_rank1.pt" in files
    # resuming this 2-rank run on 1 rank (uio-ds train, no launcher) is refused before any work
    single = subprocess.run([sys.executable, "-m", "uio_ds", "train", "--config", config,
                             "--set", f"output_dir={out}", "--resume", "auto"],
                            env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert single.returncode == 2 and "written by 2 rank(s) and this run has 1" in single.stderr
    # a fresh run into the same directory is refused before any work, and nothing is lost
    again = subprocess.run([sys.executable, "-m", "uio_ds", "train", "--config", config, "--set", f"output_dir={out}"],
                           env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds a run (checkpoints up to step 4" in again.stderr
    assert "--resume auto" in again.stderr and "--overwrite" in again.stderr
    assert ckpt.latest_tag(checkpoints) == "step00000004" and len(losses(out)) == 4
    # a live run's lock refuses a second run on the directory
    with open(os.path.join(out, ".lock"), "w") as f:
        json.dump({"host": __import__("socket").gethostname(), "pid": os.getpid(), "started": time.time()}, f)
    locked = subprocess.run([sys.executable, "-m", "uio_ds", "train", "--config", config, "--set",
                             f"output_dir={out}", "--resume", "auto"],
                            env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert locked.returncode == 2 and f"is in use by pid {os.getpid()}" in locked.stderr
    os.remove(os.path.join(out, ".lock"))
    events = os.listdir(os.path.join(out, "tensorboard"))
    assert any(f.startswith("events.out.tfevents") for f in events)
    assert set(os.listdir(os.path.join(out, "final"))) >= {"encoder", "transfer", "uio_config.json",
                                                          "mem_embeddings.safetensors"}
    steps = losses(out)
    assert sorted(steps) == [1, 2, 3, 4] and all(0 < v < 20 for v in steps.values())
    with open(os.path.join(out, "run_config.json")) as f:
        run = json.load(f)
    assert run["world_size"] == 2 and run["deepspeed"]["zero_optimization"]["stage"] == 2
    data = next(iter(run["data"].values()))
    assert data["skipped"] == {"not valid JSON": 1} and data["documents"] == 24


def test_kill_and_resume_gives_identical_losses(run_config, tmp_path):
    config, _ = run_config
    long_run = ["steps=30", "save_every=2", "keep_last=2"]
    reference = str(tmp_path / "reference")
    launch(config, reference, *long_run)
    want = losses(reference)

    out = str(tmp_path / "killed")
    proc = launch(config, out, *long_run, background=True)
    checkpoints = os.path.join(out, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        tag = ckpt.latest_tag(checkpoints)
        if tag and ckpt.tag_step(tag) >= 4:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    assert not os.path.exists(os.path.join(out, "final")), "the run finished before it was killed"
    resumed_from = ckpt.tag_step(ckpt.latest_tag(checkpoints))
    assert 4 <= resumed_from < 30

    launch(config, out, *long_run, "--resume", "auto")
    got = losses(out)
    assert sorted(got) == list(range(1, 31))
    with open(os.path.join(out, "metrics.jsonl")) as f:  # cut back to the checkpoint, then written on: once each
        assert [json.loads(line)["step"] for line in f] == list(range(1, 31))
    for step in range(resumed_from + 1, 31):
        assert got[step] == want[step], f"step {step}: {got[step]} after resume vs {want[step]} uninterrupted"


def test_zero3_run_resumes_exactly(run_config, tmp_path):
    """ZeRO-3 (the frozen base partitioned, passes in lockstep) through the trainer: a resume from
    its step-2 checkpoint repeats steps 3-4 exactly (tests/train/test_engine.py checks its steps
    against the PyTorch reference)."""
    config, _ = run_config
    run = ["save_every=2", "keep_last=2"]
    out, resumed = str(tmp_path / "zero3"), str(tmp_path / "resumed")
    launch(config, out, *run, deepspeed="zero3")
    with open(os.path.join(out, "run_config.json")) as f:
        assert json.load(f)["deepspeed"]["zero_optimization"]["stage"] == 3
    want = losses(out)
    assert sorted(want) == [1, 2, 3, 4]
    # the state of a run killed after its step-2 checkpoint, resumed
    shutil.copytree(out, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "step00000004"))
    shutil.rmtree(os.path.join(resumed, "final"))
    with open(os.path.join(out, "metrics.jsonl")) as f, open(os.path.join(resumed, "metrics.jsonl"), "w") as g:
        g.writelines(f.readlines()[:2])
    launch(config, resumed, *run, "--resume", "auto", deepspeed="zero3")
    assert losses(resumed) == want
    for part in ("mem_embeddings.safetensors", "encoder/adapter_model.safetensors"):
        with open(os.path.join(out, "final", part), "rb") as a, open(os.path.join(resumed, "final", part), "rb") as b:
            assert a.read() == b.read(), part
    # the exported parts are whole (no ZeRO-3 partition of them) and load
    from uio_ds.model.memory_model import UIOMemoryModel

    with open(config) as f:
        model = UIOMemoryModel.from_pretrained(json.load(f)["model_path"], trained_path=os.path.join(out, "final"))
    assert all(p.numel() > 0 for p in model.trainable_parameters())


def test_streaming_run_resumes_exactly(run_config, tmp_path):
    """data.streaming: sources read as streams (each rank its own share, nothing cached); a resume
    from the step-2 checkpoint continues each stream where it stood and repeats steps 3-4 exactly."""
    config, root = run_config
    run = ["data.streaming=true", "save_every=2", "keep_last=2", f"data.cache_dir={tmp_path / 'no_cache'}"]
    out, resumed = str(tmp_path / "stream"), str(tmp_path / "resumed")
    launch(config, out, *run)
    want = losses(out)
    assert sorted(want) == [1, 2, 3, 4]
    assert not os.path.exists(tmp_path / "no_cache")
    with open(os.path.join(out, "run_config.json")) as f:
        assert json.load(f)["data"]["streaming"] is True
    shutil.copytree(out, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "step00000004"))
    shutil.rmtree(os.path.join(resumed, "final"))
    with open(os.path.join(out, "metrics.jsonl")) as f, open(os.path.join(resumed, "metrics.jsonl"), "w") as g:
        g.writelines(f.readlines()[:2])
    launch(config, resumed, *run, "--resume", "auto")
    assert losses(resumed) == want


def test_overwrite_replaces_an_earlier_run(run_config, tmp_path):
    config, _ = run_config
    out = str(tmp_path / "run")
    launch(config, out, "steps=2", "save_every=1", "keep_last=2")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    proc = launch(config, out, "steps=1", "--overwrite")
    assert "--overwrite: removed the earlier run's checkpoints, final, tensorboard, metrics.jsonl" in proc.stdout
    assert sorted(losses(out)) == [1] and ckpt.complete_tags(os.path.join(out, "checkpoints")) == ["step00000001"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine" and not (tmp_path / "run" / ".lock").exists()


def test_bad_config_fails_before_any_work(run_config, tmp_path):
    config, _ = run_config
    cmd = [sys.executable, os.path.join(REPO, "launch", "train.py"), "--config", config,
           "--set", "optim.lr=-1", "algorithm.name=rtrl", "data.sources=[{\"path\": \"/nope/*.jsonl\"}]"]
    proc = subprocess.run(cmd, env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "optim.lr=-1" in proc.stderr and "algorithm.name='rtrl'" in proc.stderr
    cmd = [sys.executable, os.path.join(REPO, "launch", "train.py"), "--config", config,
           "--set", "data.sources=[{\"path\": \"/nope/*.jsonl\"}]"]
    proc = subprocess.run(cmd, env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "/nope/*.jsonl" in proc.stderr and "matches no file" in proc.stderr
    assert not os.path.exists(os.path.join(REPO, "runs", "uio"))


def _strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_training_stops_without_export(run_config, tmp_path):
    """An absurd learning rate blows the parts up: the steps with a non-finite loss or gradient
    are skipped on both ranks, the run stops after max_bad_steps of them with exit 1 and exports
    nothing, and metrics.jsonl stays strict JSON."""
    config, _ = run_config
    out = str(tmp_path / "run")
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), os.path.join(REPO, "launch", "train.py"),
           "--config", config, "--set", f"output_dir={out}", "optim.lr=1e30", "optim.grad_clip=0", "steps=12",
           "save_every=1", "max_bad_steps=2"]
    proc = subprocess.run(cmd, env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "2 steps in a row" in text and "stopped without exporting" in text and "the last checkpoint is" in text
    assert not os.path.exists(os.path.join(out, "final"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [_strict_json(line) for line in f]
    assert [r["non_finite"] for r in records][-2:] == [True, True] and records[-1]["grad_norm"] is None
    assert records[0]["non_finite"] is False  # the first step ran (and blew the parts up)
    assert not os.path.exists(os.path.join(out, ".lock"))


def test_hopeless_runs_are_refused_before_training(run_config, tmp_path):
    config, _ = run_config
    proc = subprocess.run([sys.executable, "-m", "uio_ds", "train", "--config", config, "--set",
                           f"output_dir={tmp_path / 'a'}", "optim.lr=Infinity", "optim.betas=[0.9, NaN]"],
                          env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "optim.lr=inf: must be a finite number" in proc.stderr
    assert "optim.betas[1]=nan" in proc.stderr
    # every document fits in one segment: no memory would ever be built
    proc = launch_failing(config, str(tmp_path / "b"), "uio.segment_length=256")
    assert proc.returncode == 2 and "within one segment" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "b" / "final")


def launch_failing(config: str, out: str, *extra: str):
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), os.path.join(REPO, "launch", "train.py"),
           "--config", config, "--set", f"output_dir={out}", *extra]
    proc = subprocess.run(cmd, env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    proc.stderr = proc.stdout + proc.stderr  # the launcher relays the ranks' output on stdout
    return proc


def test_one_process_without_a_launcher_trains(run_config, tmp_path):
    """uio-ds train with no launcher: a process group of one, the same outputs."""
    config, _ = run_config
    out = tmp_path / "single"
    env = {k: v for k, v in launcher_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "uio_ds", "train", "--config", config, "--set", f"output_dir={out}",
                           "steps=2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(losses(str(out))) == [1, 2] and (out / "final" / "uio_config.json").exists()


def test_resume_applies_rate_changes_and_refuses_trajectory_changes(run_config, tmp_path):
    """A resumed run takes a new learning rate and length for real (the schedule is rebuilt from
    the restored step); a change of the data, the model or the algorithm is refused unless
    --allow-config-change."""
    from uio_ds.config import TrainConfig

    config, _ = run_config
    out = str(tmp_path / "run")
    launch(config, out, "steps=4", "save_every=2")
    proc = launch(config, out, "steps=6", "optim.lr=0.5", "--resume", "auto")
    assert "config changes since that checkpoint, applied from step 5" in proc.stdout
    assert "optim.lr: 0.003 -> 0.5" in proc.stdout and "steps: 4 -> 6" in proc.stdout
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lrs = {r["step"]: r["lr"] for r in map(json.loads, f)}
    optim = TrainConfig.from_file(config).optim
    for step in (5, 6):  # the rate of step s is the schedule's at index s - 1, over 6 steps
        assert lrs[step] == pytest.approx(0.5 * optim.lr_multiplier(step - 1, 6), rel=1e-6)
    with open(os.path.join(out, "checkpoints", "step00000006", "train_config.json")) as f:
        assert json.load(f)["optim"]["lr"] == 0.5

    refused = launch_failing(config, out, "steps=8", "data.documents_per_step=1", "uio.compression_ratio=4",
                             "--resume", "auto")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "data.documents_per_step: 2 -> 1" in refused.stderr and "uio.compression_ratio: 8 -> 4" in refused.stderr
    assert "--allow-config-change" in refused.stderr and ckpt.latest_tag(os.path.join(out, "checkpoints")) == "step00000006"
    proc = launch(config, out, "steps=7", "data.documents_per_step=1", "--resume", "auto", "--allow-config-change")
    assert "data.documents_per_step: 2 -> 1" in proc.stdout and sorted(losses(out)) == list(range(1, 8))


def test_distillation_trains_on_two_ranks_and_logs_both_terms(run_config, tmp_path):
    """objective.distill through the launcher, the prompt-completion source with its own objective
    (next-token loss only): a step's loss is 0.5 x the books' next-token loss + 2 x their KL + the
    answers' next-token loss, between the bounds the logged terms give; ZeRO-3 is refused."""
    config, _ = run_config
    with open(config) as f:
        sources = json.load(f)["data"]["sources"]
    sources[1]["objective"] = {"lm": 1.0, "distill": 0.0}
    out = str(tmp_path / "distill")
    launch(config, out, "steps=3", "objective.lm=0.5", "objective.distill=2.0", f"data.sources={json.dumps(sources)}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["distill_kl"] > 0 and r["lm_loss"] > 0
        low, high = 0.5 * r["lm_loss"] + 2.0 * r["distill_kl"], r["lm_loss"] + 2.0 * r["distill_kl"]
        assert low * (1 - 1e-4) <= r["loss"] <= high * (1 + 1e-4), r
    refused = launch_failing(config, str(tmp_path / "z3"), "objective.distill=1", "--deepspeed",
                             os.path.join(REPO, "ds_configs", "zero3.json"))
    assert refused.returncode == 2 and "objective.distill=1" in refused.stderr and "Traceback" not in refused.stderr
