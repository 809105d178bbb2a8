"""One-shot generation from the command line: ``uio-ds generate`` (a long prompt from a file or
stdin, its continuation streamed) and ``uio-ds demo`` (a tiny model, untrained parts, a long
generated text), with the speed of prefill and decoding."""

from __future__ import annotations

import os
import sys
import time


def stream_text(tokenizer, model, prompt_ids, args) -> "GenerationResult":  # noqa: F821
    """Generate, printing the continuation as it is produced."""
    from uio_ds.model.generation import generate

    produced: list[int] = []
    shown = ""

    def show(tokens) -> None:
        nonlocal shown
        produced.append(int(tokens[0]))
        text = tokenizer.decode(produced, skip_special_tokens=True)
        # byte-level tokens may end mid-character: print only once the text is stable
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text

    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return generate(
        model,
        prompt_ids,
        args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token_ids=stop,
        on_tokens=show,
    )


def report(result, model) -> None:
    """The run's figures, on stderr: stdout holds the continuation alone (``> out.txt`` keeps it)."""
    print(file=sys.stdout, flush=True)  # the continuation's last line
    print(
        f"\nprompt {result.prompt_length} tokens -> {result.num_compressions} segments compressed into "
        f"{result.memory_tokens} memory slots (l={model.segment_length}, m={model.num_mem_tokens})\n"
        f"prefill {result.prefill_seconds:.2f} s ({result.prefill_tokens_per_second:,.0f} tokens/s), "
        f"decode {result.num_generated} tokens in {result.decode_seconds:.2f} s "
        f"({result.decode_tokens_per_second:,.1f} tokens/s)",
        file=sys.stderr,
    )


def cmd_demo(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from uio_ds.config import LoRAConfig, UIOConfig
    from uio_ds.formats import synthetic_text
    from uio_ds.model.memory_model import UIOMemoryModel
    from uio_ds.model.tiny import build_tiny_model

    torch.manual_seed(args.seed)
    base_dir = build_tiny_model(args.arch, os.path.join(args.out, f"tiny-{args.arch}"), seed=args.seed)
    # rank 8 adapters: the paper's rank 128 would exceed the tiny model's hidden size of 64
    config = UIOConfig(
        segment_length=args.segment_length,
        compression_ratio=args.compression_ratio,
        encoder_lora=LoRAConfig(rank=8, alpha=32.0, target_modules=("q_proj", "v_proj")),
        transfer_lora=LoRAConfig(rank=8, alpha=32.0, target_modules=("k_proj", "v_proj")),
        position_overflow="drop_oldest",
    )
    model = UIOMemoryModel.from_pretrained(base_dir, config, device=args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    s = model.trainable_summary()
    print(f"base model: {base_dir} ({s['total'] - s['trainable']:,} frozen parameters)")
    print(f"UIO parts: {s['trainable']:,} trainable parameters ({100 * s['share']:.1f}%), "
          f"l={config.segment_length}, ratio {config.compression_ratio} -> {config.num_mem_tokens} <mem> tokens")

    uio_dir = os.path.join(args.out, "uio")
    model.save_trained(uio_dir)
    model = UIOMemoryModel.from_pretrained(base_dir, trained_path=uio_dir, device=args.device).eval()
    print(f"trained parts saved to {uio_dir} and reloaded (peft adapters + <mem> embeddings)")

    text = synthetic_text(max(1, args.prompt_tokens // 12), seed=args.seed + 1)
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : args.prompt_tokens]
    print(f"prompt: {ids.shape[1]} tokens of generated text; continuation (untrained weights: expect noise):\n")
    result = stream_text(tokenizer, model, ids, args)
    report(result, model)
    return 0


def cmd_generate(args) -> int:
    from transformers import AutoTokenizer

    from uio_ds.config import UIOConfig
    from uio_ds.model.memory_model import UIOMemoryModel

    if args.uio and (args.segment_length or args.compression_ratio):
        print("error: --segment-length/--compression-ratio come from --uio's saved config; drop them", file=sys.stderr)
        return 2
    if args.prompt_file == "-":
        prompt = sys.stdin.read()
    elif not os.path.isfile(args.prompt_file):
        print(f"error: prompt file {args.prompt_file!r} not found", file=sys.stderr)
        return 2
    else:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except UnicodeDecodeError as err:
            print(f"error: prompt file {args.prompt_file!r} is not UTF-8 text ({err.reason} at byte {err.start}): "
                  "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)", file=sys.stderr)
            return 2
    if not prompt.strip():
        print("error: the prompt is empty", file=sys.stderr)
        return 2
    config = None
    if not args.uio:
        overrides = {k: v for k, v in (("segment_length", args.segment_length),
                                       ("compression_ratio", args.compression_ratio),
                                       ("dtype", args.dtype)) if v}
        config = UIOConfig(**overrides)
    start = time.perf_counter()
    model = UIOMemoryModel.from_pretrained(args.model, config, trained_path=args.uio, device=args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    print(f"loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, : args.max_prompt_tokens]
    result = stream_text(tokenizer, model, ids, args)
    report(result, model)
    return 0
