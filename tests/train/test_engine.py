"""DeepSpeed ZeRO-1/2/3 steps on two real CPU ranks against a single-process PyTorch reference."""

import json
import os
import subprocess

import pytest
import torch
from engine_cases import CASES, WORLD, case_documents, case_model, case_train_config
from helpers import REPO, free_port, launcher_env

from uio_ds.algo import build_strategy, count_targets
from uio_ds.config import ConfigError


@pytest.fixture(scope="module")
def deepspeed_runs(tiny_dirs, tmp_path_factory):
    """Every case of engine_cases.CASES, run once through the deepspeed launcher with 2 CPU ranks."""
    out = tmp_path_factory.mktemp("engine")
    cmd = ["deepspeed", "--num_gpus", str(WORLD), "--master_port", str(free_port()),
           os.path.join(REPO, "tests", "train", "engine_worker.py"), "--model", tiny_dirs["llama"], "--out", str(out)]
    proc = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {name: torch.load(out / f"{name}.pt", weights_only=False) for name in CASES}


def reference(model_dir: str, case: dict) -> list[dict]:
    """The same steps in one process: each rank's gradient by the same strategy, averaged the way
    the global token-weighted mean demands, clipped like DeepSpeed, and torch's AdamW."""
    cfg = case_train_config(model_dir, case)
    model = case_model(model_dir, case)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.optim.lr_multiplier(s, cfg.steps))
    strategy = build_strategy(case["algorithm"], case["window"])
    history = []
    for step in range(case["steps"]):
        docs = [case_documents(case, r, step) for r in range(WORLD)]
        total = sum(count_targets([d.unsqueeze(0) for d in rank_docs]) for rank_docs in docs)
        results = [strategy.run(model, rank_docs, loss_scale=1.0 / total) for rank_docs in docs]
        grads = [sum(g for g in gs if g is not None) for gs in zip(*(r.grads for r in results))]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        coef = case["clip"] / (norm + 1e-6)
        for p, g in zip(params, grads):
            p.grad = g * coef if case["clip"] > 0 and coef < 1 else g.clone()
        used_lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        history.append({"params": [p.detach().clone() for p in params], "grad_norm": norm,
                        "loss": sum(r.loss_sum for r in results) / total, "lr": used_lr})
    return history


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten().double() for t in tensors])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_rank_steps_match_reference(deepspeed_runs, tiny_dirs, name):
    case = CASES[name]
    got = deepspeed_runs[name]["history"]
    want = reference(tiny_dirs["llama"], case)
    start = flat(case_model(tiny_dirs["llama"], case).trainable_parameters())
    for step, (g, w) in enumerate(zip(got, want)):
        update_ds, update_ref = flat(g["params"]) - start, flat(w["params"]) - start
        err = ((update_ds - update_ref).norm() / update_ref.norm()).item()
        # fp32 rounding only; it grows over steps as Adam amplifies tiny differences
        assert err < 1e-5 * 10**step, f"step {step}: relative update error {err:.2e}"
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
        assert g["lr"] == pytest.approx(w["lr"], rel=1e-9)  # the rate the step used
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4)
    # the parameters really moved, and clipping happened where asked
    assert (flat(got[-1]["params"]) - start).norm() > 1e-3
    if case["clip"] == 0.5:
        assert want[0]["grad_norm"] > 0.5


@pytest.mark.slow
def test_offload_config_keeps_encoder_graphs_on_cpu(deepspeed_runs):
    assert deepspeed_runs["zero2_offload"]["graph_mode"] == "offload"
    assert deepspeed_runs["zero2"]["graph_mode"] == "keep"


@pytest.mark.slow
def test_zero3_pads_the_rank_with_fewer_passes(deepspeed_runs):
    """Under ZeRO-3 encoder graphs are rebuilt at backward, and the ranks (one document of 3-4
    segments against two of 2 and 5-6) only matched their passes by padding."""
    run = deepspeed_runs["zero3"]
    assert run["graph_mode"] == "recompute"
    assert deepspeed_runs["zero3_offload"]["graph_mode"] == "recompute_offload"  # cpu_checkpointing
    for step in run["history"]:
        assert step["stats"]["padding_passes"] > 0
        assert step["stats"]["encoder_recomputes"] == step["stats"]["encoder_backward_passes"] > 0
    assert "padding_passes" not in deepspeed_runs["zero2"]["history"][0]["stats"]


@pytest.mark.slow
def test_memory_planner_knows_what_zero3_keeps_whole(deepspeed_runs, tiny_dirs):
    """The planner's ZeRO-3 layout is DeepSpeed's: the frozen tensors it keeps whole are those
    DeepSpeed made persistent, and a rank's partition of the rest is 1/2 of it (2 ranks)."""
    from uio_ds.plan.memory import zero3_layout

    model = case_model(tiny_dirs["llama"], CASES["zero3"])
    whole, gathered = zero3_layout(model)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    got = deepspeed_runs["zero3"]["zero3_layout"]
    assert got["whole"] == whole > 0
    assert got["partition"] == pytest.approx((frozen - whole) / WORLD, rel=1e-3)
    assert gathered == max(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))


def test_every_shipped_deepspeed_config_resolves(tiny_dirs):
    from uio_ds.train.ds_config import resolve_ds_config

    cfg = case_train_config(tiny_dirs["llama"], CASES["zero2"])
    configs = sorted(f for f in os.listdir(os.path.join(REPO, "ds_configs")) if f.endswith(".json"))
    assert {"zero1.json", "zero2.json", "zero2_offload.json"} <= set(configs)
    for name in configs:
        with open(os.path.join(REPO, "ds_configs", name)) as f:
            raw = json.load(f)
        assert "gradient_clipping" in raw, name  # stated explicitly in every shipped file
        ds, _ = resolve_ds_config(raw, cfg, 2)
        if ds["zero_optimization"]["stage"] == 3:  # resolved by the engine, which sees the trainable sizes
            assert ds["zero_optimization"].pop("stage3_param_persistence_threshold") == "auto"
        assert "auto" not in json.dumps(ds), name
        assert ds["gradient_clipping"] == 0.5 and ds["train_batch_size"] == 2
        assert ds["optimizer"]["params"]["torch_adam"] is True  # CPU: no fused Adam


def test_auto_bucket_sizes_follow_the_hidden_size(tiny_dirs):
    """zero_optimization's "auto" buckets resolve to hidden_size squared (as Hugging Face's
    DeepSpeed configs are written); without the model's hidden size they are refused."""
    from uio_ds.train.ds_config import resolve_ds_config

    cfg = case_train_config(tiny_dirs["llama"], CASES["zero2"])
    with open(os.path.join(REPO, "ds_configs", "zero2.json")) as f:
        raw = json.load(f)
    raw["zero_optimization"].update(reduce_bucket_size="auto", allgather_bucket_size="auto")
    ds, _ = resolve_ds_config(raw, cfg, 2, hidden_size=4096)
    assert ds["zero_optimization"]["reduce_bucket_size"] == ds["zero_optimization"]["allgather_bucket_size"] == 4096**2
    with pytest.raises(ConfigError, match="reduce_bucket_size=\"auto\" needs the base model's hidden size"):
        resolve_ds_config(raw, cfg, 2)


def test_bad_deepspeed_configs_are_refused_with_every_problem(tiny_dirs):
    from uio_ds.train.ds_config import resolve_ds_config

    cfg = case_train_config(tiny_dirs["llama"], CASES["zero2"])
    raw = {"gradient_accumulation_steps": 4, "zero_optimization": {"stage": 4}, "bf16": {"enabled": True},
           "optimizer": {"type": "Lamb", "params": {"lr": 0.5}}, "scheduler": {"type": "WarmupLR"}}
    with pytest.raises(ConfigError) as err:
        resolve_ds_config(raw, cfg, 2)
    text = str(err.value)
    for needle in ("gradient_accumulation_steps=4", "no gradient_clipping", "stage=4", "bf16.enabled=True",
                   "optimizer.type='Lamb'", "optimizer.params.lr=0.5", "scheduler section"):
        assert needle in text, needle


def _fp16_train_config(model_dir: str):
    from uio_ds.config import TrainConfig, apply_overrides

    cfg = case_train_config(model_dir, CASES["zero2"])
    cfg = TrainConfig.from_dict(apply_overrides(cfg.to_dict(), ["uio.dtype=float16"]))
    with open(os.path.join(REPO, "ds_configs", "zero2.json")) as f:
        return cfg, json.load(f)


def test_fp16_is_refused_exactly_where_a_refusal_is_given(tiny_dirs):
    """The resolver enables fp16 unless it is told why it cannot run, and then names the reason and the fix."""
    from uio_ds.train.ds_config import resolve_ds_config

    cfg, raw = _fp16_train_config(tiny_dirs["llama"])
    assert resolve_ds_config(raw, cfg, 2)[0]["fp16"]["enabled"] is True  # planned for another machine
    with pytest.raises(ConfigError, match="no fp16 here: use uio.dtype=\"bfloat16\""):
        resolve_ds_config(raw, cfg, 2, fp16_refusal="no fp16 here")


@pytest.mark.parametrize("supported", [True, False], ids=["fp16-supported", "fp16-unsupported"])
def test_fp16_refusal_follows_the_gpu_accelerator_and_refuses_cpu_ranks(monkeypatch, supported):
    """On a GPU, DeepSpeed's accelerator decides (both answers, on any machine); CPU ranks are refused
    whatever their accelerator says (its loss scaling skipped every step of an fp16 run on a CPU
    that accepts fp16)."""
    import torch
    from deepspeed.accelerator import get_accelerator

    from uio_ds.train import engine

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: supported)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CPU ranks" in engine.fp16_refusal()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (engine.fp16_refusal() is None) == supported
    if not supported:
        assert "fp16 is not supported by DeepSpeed's" in engine.fp16_refusal()


def test_surrogate_gradient_equals_buffers_under_a_loss_scale(tiny_dirs):
    """engine.backward multiplies by the fp16 loss scale; buffers that already carry it must come
    out unchanged (the scale divides out exactly, being a power of two)."""
    from uio_ds.train.engine import SurrogateObjective

    model = case_model(tiny_dirs["llama"], CASES["zero2"])
    params = model.trainable_parameters()
    gen = torch.Generator().manual_seed(0)
    buffers = [torch.randn(p.shape, generator=gen) for p in params]
    scale = 2.0**16
    value = SurrogateObjective(model)(buffers, loss_scale=scale)
    grads = torch.autograd.grad(value * scale, params)
    assert all(torch.equal(g, b) for g, b in zip(grads, buffers))
