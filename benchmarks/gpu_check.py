"""The GPU check: what can only be measured on a CUDA device, in one command (about 8 minutes on
one GPU), written as JSON.

1. ``flash``: flash-attn 2 against torch SDPA for the decoder with a memory prefix (logits and
   the trainable parts' gradients), random SmolLM2-135M weights in bf16; skipped, with the
   reason, where flash-attn is not installed.
2. ``steps``: unbiased incremental TBPTT training steps (S=2, AdamW) of UIO on random
   SmolLM2-135M weights in bf16, on CUDA and on the CPU from the same weights and documents:
   loss per step and the first step's gradient, CUDA against the CPU reference.
3. ``plan``: the memory planner's prediction of one training step (fake tensors) against
   ``torch.cuda.max_memory_allocated`` for the same step run on the GPU, at the Llama-3.2-1B
   shape with a 16K-token document, with and without decoder recompute.
4. ``prefill``: ``benchmarks/prefill.py`` at the Llama-2-7B shape in bf16, UIO against full
   attention and StreamingLLM, 4K..128K tokens.
5. ``zero3``: ``benchmarks/zero3_step.py`` under the deepspeed launcher on every GPU (NCCL): the
   trainer's ZeRO-3 path (the base loaded on the host and partitioned by ``zero.Init``, buffers
   moved, passes in lockstep) against ZeRO-2 on the same documents: losses, step times and
   peak memory, on a small Llama with its own tokenizer.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu] [--parts flash steps plan prefill zero3]
    python benchmarks/gpu_check.py --smoke --out /tmp/check   # every part at toy sizes on the CPU

Each part records its figures or the error that stopped it, and the next part runs anyway.
Random weights are honest here: every comparison is between two runs of the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import torch
from common import RESULTS_DIR, flat, perturb_trainable

from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.model.attention import flash_attn_available
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.plan.memory import SHAPES, PlanSettings, base_config, plan, step_document, step_strategy, uio_config
from uio_ds.utils.machine import machine

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5)


def _random_model_dir(shape: dict, root: str, name: str) -> str:
    """A model directory of random weights of ``shape`` (config.json + safetensors), so both
    devices load the same weights through ``from_pretrained``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(shape)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = os.path.join(root, name)
    model.save_pretrained(path)
    return path


def _uio_config(l: int, ratio: int, **extra) -> UIOConfig:
    lora = dict(rank=8, alpha=16.0)
    return UIOConfig(segment_length=l, compression_ratio=ratio, dtype="bfloat16",
                     encoder_lora=LoRAConfig(target_modules=("q_proj", "v_proj"), **lora),
                     transfer_lora=LoRAConfig(target_modules=("k_proj", "v_proj"), **lora), **extra)


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.detach().double().cpu().flatten(), b.detach().double().cpu().flatten()
    return {"max_abs_diff": (a - b).abs().max().item(), "rel_err": ((a - b).norm() / b.norm().clamp_min(1e-30)).item(),
            "cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item()}


def part_flash(args, device, root) -> dict:
    if not flash_attn_available():
        return {"status": "skipped", "why": "flash_attn is not installed or no CUDA device: pip install 'uio_ds[gpu]' "
                                            "(its calling convention is tested on the CPU with a stand-in)"}
    path = _random_model_dir(TOY if args.smoke else SHAPES["smollm2-135m"], root, "flash_model")
    l, ratio = (16, 4) if args.smoke else (256, 8)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 500, (2, 3 * l), generator=gen).to(device)
    out = {}
    for attention in ("flash_attention_2", "sdpa"):
        model = UIOMemoryModel.from_pretrained(path, _uio_config(l, ratio, attention=attention), device=device)
        perturb_trainable(model, seed=1, scale=0.02)
        memory = model.memory_kv(model.encode(ids[:, : 2 * l].reshape(-1, l))).per_text(2)
        result = model.decode(ids[:, 2 * l :], memory, ids[:, 2 * l :].roll(-1, 1))
        grads = torch.autograd.grad(result.loss_sum, model.trainable_parameters(), allow_unused=True)
        out[attention] = (result.logits.float(), flat(grads, model.trainable_parameters()))
        del model
    return {"status": "ok", "shape": "toy" if args.smoke else "smollm2-135m", "segment_length": l,
            "memory_tokens": 2 * (l // ratio), "logits": _compare(out["flash_attention_2"][0], out["sdpa"][0]),
            "gradients": _compare(out["flash_attention_2"][1], out["sdpa"][1])}


def part_steps(args, device, root) -> dict:
    from uio_ds.algo import build_strategy

    path = _random_model_dir(TOY if args.smoke else SHAPES["smollm2-135m"], root, "steps_model")
    l, ratio, tokens, steps = (16, 4, 80, 2) if args.smoke else (128, 8, 2048, 3)
    gen = torch.Generator().manual_seed(3)
    docs = [torch.randint(3, 500, (1, tokens), generator=gen) for _ in range(steps)]
    runs = {}
    for name, where in (("cuda", device), ("cpu", torch.device("cpu"))):
        torch.manual_seed(0)
        model = UIOMemoryModel.from_pretrained(path, _uio_config(l, ratio), device=where)
        params = model.trainable_parameters()
        optim = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        strategy = build_strategy("unbiased", 2, seed=0)
        losses, first, start = [], None, time.perf_counter()
        for doc in docs:
            result = strategy.run(model, doc.to(where))
            for p, g in zip(params, result.grads):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            losses.append(result.loss)
            first = first if first is not None else flat(result.grads, params)
        if where.type == "cuda":
            torch.cuda.synchronize()
        runs[name] = {"losses": losses, "grad": first, "seconds": time.perf_counter() - start}
        del model, optim
    cuda, cpu = runs["cuda"], runs["cpu"]
    return {"status": "ok", "shape": "toy" if args.smoke else "smollm2-135m", "dtype": "bfloat16",
            "segment_length": l, "compression_ratio": ratio, "document_tokens": tokens, "steps": steps,
            "losses_cuda": cuda["losses"], "losses_cpu": cpu["losses"],
            "loss_rel_diff": [abs(a - b) / abs(b) for a, b in zip(cuda["losses"], cpu["losses"])],
            "first_step_gradient": _compare(cuda["grad"], cpu["grad"]),
            "seconds_cuda": round(cuda["seconds"], 2), "seconds_cpu": round(cpu["seconds"], 2)}


def part_plan(args, device, root) -> dict:
    from transformers import AutoModelForCausalLM

    shape = "toy" if args.smoke else "llama3.2-1b"
    rows = []
    for recompute in (False, True):
        settings = PlanSettings(segment_length=64 if args.smoke else 1024, compression_ratio=8 if args.smoke else 32,
                                document_tokens=640 if args.smoke else 16384, dtype="bfloat16", ranks=1, zero_stage=0,
                                # on the CPU the offloaded copies stay on the measured device: kept there
                                window=2, activation_offload=not args.smoke, lora_rank=16)
        settings.uio = dataclasses.replace(uio_config(settings), decoder_recompute=recompute)
        source = _random_model_dir(TOY, root, "plan_toy") if args.smoke else shape
        planned = plan(source, settings)
        config = base_config(source)
        with torch.device(device):
            base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
            model = UIOMemoryModel(base, uio_config(settings))
        strategy = step_strategy(settings, offload_device="cpu")
        doc = step_document(model, settings).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        strategy.run(model, doc)
        seconds = time.perf_counter() - start
        if device.type == "cuda":
            measured = torch.cuda.max_memory_allocated() - before
        else:  # the smoke run: the planner's own CPU measurement of the step
            from uio_ds.plan.memory import measure

            measured = measure(source, settings).step_peak
        rows.append({"decoder_recompute": recompute, "planned_step_bytes": planned.step_peak,
                     "planned_parts": planned.step, "measured_step_bytes": measured,
                     "planned_over_measured": planned.step_peak / measured if measured else None,
                     "step_seconds": round(seconds, 2)})
        del model, base
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"status": "ok", "shape": shape, "settings": dataclasses.asdict(settings) | {"uio": None}, "rows": rows,
            "note": "step bytes: what the step allocates above the weights (the planner's step peak); the "
                    "planner runs attention through SDPA's math path on fake CPU tensors"}


def part_prefill(args, device, root) -> dict:
    name = "gpu_check_prefill"
    cmd = [sys.executable, os.path.join(HERE, "prefill.py"), "--name", name, "--repeats", "1", "--decode-tokens", "8",
           "--methods", "uio", "full", "streaming"]
    if args.smoke:
        cmd += ["--shape", "bench", "--lengths", "1024", "2048", "--time-budget", "30"]
    else:
        cmd += ["--shape", "llama2-7b", "--dtype", "bfloat16", "--lengths", "4096", "8192", "16384", "32768", "65536",
                "131072", "--time-budget", "45"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.prefill_timeout)
    if done.returncode:
        raise RuntimeError(f"prefill.py exited {done.returncode}: {done.stderr[-2000:]}")
    moved = []
    for ext in ("json", "png"):
        src = os.path.join(RESULTS_DIR, f"{name}.{ext}")
        if os.path.isfile(src):
            dst = os.path.join(args.out, f"prefill_{'toy' if args.smoke else 'llama2_7b'}.{ext}")
            shutil.move(src, dst)
            moved.append(dst)
    with open(moved[0]) as f:
        rows = json.load(f)["rows"]
    return {"status": "ok", "files": [os.path.basename(m) for m in moved], "seconds": round(time.perf_counter() - start, 1),
            "rows": rows}


def part_zero3(args, device, root) -> dict:
    from uio_ds.formats import synthetic_text
    from uio_ds.model.tiny import build_tiny_model

    shape = {} if args.smoke else {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
                                   "num_attention_heads": 8, "num_key_value_heads": 4}
    model = build_tiny_model("llama", os.path.join(root, "zero3_llama"), **shape)
    corpus = os.path.join(root, "zero3_docs.jsonl")
    with open(corpus, "w") as f:
        for i in range(64):
            f.write(json.dumps({"text": synthetic_text(20 + 7 * (i % 9), seed=i)}) + "\n")
    name, ranks = "gpu_check_zero3", (2 if args.smoke else torch.cuda.device_count())
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")  # this environment's launcher
    cmd = [launcher if os.path.isfile(launcher) else "deepspeed", "--num_gpus", str(ranks), "--master_port", str(29517), os.path.join(HERE, "zero3_step.py"),
           "--config", "tiny", "--tokens", "512" if args.smoke else "2048", "--rounds", "2" if args.smoke else "4",
           "--name", name, "--out-dir", os.path.join(root, "zero3_runs"), "--set", f"model_path={model}",
           f'data.sources=[{{"path": "{corpus}"}}]', f"data.cache_dir={os.path.join(root, 'zero3_cache')}",
           "uio.dtype=bfloat16"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE), **({"DS_ACCELERATOR": "cpu"} if args.smoke else {}))
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.prefill_timeout, env=env, cwd=HERE)
    if done.returncode:
        raise RuntimeError(f"zero3_step.py exited {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
    src = os.path.join(RESULTS_DIR, f"{name}.json")
    dst = os.path.join(args.out, f"zero3_{'toy' if args.smoke else 'gpu'}.json")
    shutil.move(src, dst)
    with open(dst) as f:
        result = json.load(f)
    losses = [(r["zero2_loss"], r["zero3_loss"]) for r in result["rows"]]
    return {"status": "ok", "ranks": ranks, "file": os.path.basename(dst), "seconds": round(time.perf_counter() - start, 1),
            "median": result["median"], "losses_zero2_zero3": losses,
            "max_loss_diff": max(abs(a - b) for a, b in losses)}


PARTS = {"flash": part_flash, "steps": part_steps, "plan": part_plan, "prefill": part_prefill, "zero3": part_zero3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "gpu"), help="directory for gpu_check.json and plots")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--smoke", action="store_true", help="every part at toy sizes on the CPU (checks the script)")
    p.add_argument("--prefill-timeout", type=int, default=300)
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device: the GPU check measures CUDA against the CPU (use --smoke to try the script "
              "on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if not args.smoke else "cpu")
    os.makedirs(args.out, exist_ok=True)
    report = {"benchmark": "gpu_check", "machine": machine(), "smoke": args.smoke, "parts": {}}
    with tempfile.TemporaryDirectory() as root:
        for name in args.parts:
            start = time.perf_counter()
            print(f"[gpu_check] {name} ...", flush=True)
            try:
                result = PARTS[name](args, device, root)
            except Exception as err:  # a failed part is a figure too: record it and go on
                result = {"status": "error", "error": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()[-3000:]}
            result["part_seconds"] = round(time.perf_counter() - start, 1)
            report["parts"][name] = result
            print(f"[gpu_check] {name}: {result['status']} in {result['part_seconds']} s", flush=True)
            path = os.path.join(args.out, "gpu_check.json")
            with open(path, "w") as f:  # after every part, so a run cut short keeps what it measured
                json.dump(report, f, indent=2, default=str)
    print(json.dumps({k: v.get("status") for k, v in report["parts"].items()}))
    return 0 if all(v["status"] != "error" for v in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
