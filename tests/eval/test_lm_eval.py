"""``--model uio_ds`` in lm-evaluation-harness, offline: local tasks (YAML over JSON lines written
here) run through ``lm_eval.simple_evaluate`` and the command line on the tiny models, against a
plain computation through ``UIOMemoryModel``, ``uio-ds eval``'s perplexity and ``uio-ds generate``."""

import json
import math
import os
import shutil
import subprocess
import sys

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, assert_same_function, launcher_env, load, perturb_trainable
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from uio_ds.eval.lm_eval_args import ModelArgsError, parse_model_args
from uio_ds.eval.lm_eval_model import UIODSLM
from uio_ds.formats import synthetic_text
from uio_ds.model.kv import MemoryKV
from uio_ds.model.positions import split_segments

SENTENCE = "The quick brown fox jumps over the lazy dog. "


# ---------------------------------------------------------------------------------------- set-up


@pytest.fixture(scope="module")
def dirs(tiny_dirs, short_context_dir, tmp_path_factory) -> dict:
    """A tiny Llama whose tokenizer starts every text with BOS (as Llama's do), trained parts for
    it (l=16, m=4, moved off their initial values), and parts for the 64-position Llama."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("lmeval")
    base = str(root / "llama-bos")
    shutil.copytree(tiny_dirs["llama"], base)
    AutoTokenizer.from_pretrained(base, add_bos_token=True).save_pretrained(base)
    out = {"root": root, "base": base, "short": short_context_dir}
    for name, directory in (("parts", base), ("short_parts", short_context_dir)):
        model = load(directory)
        perturb_trainable(model, scale=0.2)
        out[name] = model.save_trained(str(root / name))
    return out


@pytest.fixture(scope="module")
def lm(dirs) -> UIODSLM:
    return UIODSLM(base=dirs["base"], uio=dirs["parts"], device="cpu", batch_size=2)


def write_task(folder, name: str, records: list[dict], **fields) -> None:
    """A task of a local JSON lines file, as a user would point any task at local data."""
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, f"{name}.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    lines = [f"task: {name}", "dataset_path: json",
             f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {os.path.join(folder, 'hf-cache')}",
             "test_split: test"] + [f"{k}: {json.dumps(v)}" for k, v in fields.items()]
    with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def mc_fields() -> dict:
    return {"output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}", "target_delimiter": "", "metric_list": [{"metric": "acc"}]}


def evaluate(model, folder, tasks: list[str], **kwargs) -> dict:
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, log_samples=True, **kwargs)


def responses(results: dict, task: str) -> list[list]:
    """Per document, the model's answer to each of its requests."""
    return [[r[0] for r in s["resps"]] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def direct_logprobs(model, ids: list[int], use_memory: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(ids[i+1] | ids[:i+1]) for every i, and whether it is the argmax, computed plainly:
    every full segment of the text read compressed on its own, each segment decoded after the
    memories of all segments before it (or alone, without memory)."""
    read = torch.tensor([ids[:-1]])
    bounds = split_segments(read.shape[1], model.segment_length)
    with torch.no_grad():
        memories = [model.memory_kv(model.encode(read[:, s:e])) for s, e in bounds[:-1]] if use_memory else []
        logits = torch.cat([model.decode(read[:, s:e], MemoryKV.cat(memories[:t]) if t and memories else None).logits
                            for t, (s, e) in enumerate(bounds)], dim=1)[0]
    targets = torch.tensor(ids[1:])
    picked = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]
    return picked, logits.argmax(-1) == targets


def direct_pair(lm, model, context: str, continuation: str) -> tuple[float, bool]:
    """(log-likelihood, greedy) of ``continuation`` after ``context``, tokenized as causal models in
    the harness are (the whole text, less the context's tokens) and scored by ``direct_logprobs``."""
    whole, ctx = lm.tok_encode(context + continuation), lm.tok_encode(context)
    cut = lm.max_length is not None and len(whole) - 1 > lm.max_length
    ids = whole[-(lm.max_length + 1):] if cut else whole
    picked, greedy = direct_logprobs(model, ids, lm.options.use_memory)
    n = len(whole) - len(ctx)
    return float(picked[-n:].sum()), bool(greedy[-n:].all())


# ---------------------------------------------------------------------------------------- tests


def test_loglikelihoods_equal_a_direct_computation(lm, dirs):
    """Multiple choice through the harness: each choice's log-likelihood and greedy flag equal the
    plain computation, contexts of one to five segments, three choices of one context read as a
    batch of two and then one (right-padded continuations across a compression)."""
    folder = dirs["root"] / "mc"
    docs = [{"context": SENTENCE * k + "Then", "choices": [" it ran", " the dog slept all day under the old oak tree"
                                                           " by the river", " x"], "label": 0} for k in (1, 3, 6)]
    docs.append({"context": "A", "choices": [" yes", " no"], "label": 1})
    write_task(folder, "uio_mc", docs, **mc_fields())
    results = evaluate(lm, folder, ["uio_mc"])
    got = [pair for doc in responses(results, "uio_mc") for pair in doc]
    want = [direct_pair(lm, lm.model, d["context"], c) for d in docs for c in d["choices"]]
    assert_same_function(torch.tensor([g[0] for g in got]), torch.tensor([w[0] for w in want]), lm.model.base.config)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert results["config"]["uio_ds_method"] == "uio" and results["config"]["memory_tokens"] == 4


def test_greedy_flag_is_what_generation_would_produce(lm):
    """A continuation that greedy decoding produces is flagged greedy, one token off it is not."""
    from uio_ds.model.generation import generate

    context = lm.tok_encode(SENTENCE * 3)
    greedy = generate(lm.model, torch.tensor([context]), 20).sequences[0, len(context):].tolist()  # crosses a compression
    other = greedy[:-1] + [(greedy[-1] + 1) % lm.model.vocab_size]
    out = lm._loglikelihood_tokens([(("", ""), context, greedy), (("", ""), context, other)], disable_tqdm=True)
    assert out[0][1] is True and out[1][1] is False
    want = direct_logprobs(lm.model, context + greedy)[0][-20:].sum()
    assert_same_function(torch.tensor([out[0][0]]), want.reshape(1), lm.model.base.config)


def test_rolling_perplexity_equals_uio_ds_eval(lm, dirs, tmp_path):
    """Document log-likelihoods through the harness give, per document, the perplexity that
    ``uio-ds eval`` reports for the same text, with memory and (no trained parts) without."""
    from uio_ds.eval.run import main

    texts = [synthetic_text(n, seed=n) for n in (4, 12)]  # about 5 and 14 segments
    folder = dirs["root"] / "rolling"
    fields = {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
              "metric_list": [{"metric": "word_perplexity"}]}
    write_task(folder, "uio_rolling", [{"text": t} for t in texts], **fields)
    plain = UIODSLM(base=dirs["base"], segment_length=16, device="cpu")
    ours = {"uio": responses(evaluate(lm, folder, ["uio_rolling"]), "uio_rolling"),
            "no_memory": responses(evaluate(plain, folder, ["uio_rolling"]), "uio_rolling")}
    assert plain.get_model_info()["uio_ds_method"] == "no_memory" and "no_memory" in plain.reading()

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert main(["--model", dirs["base"], "--uio", dirs["parts"], "--data", str(data), "--tasks", "perplexity",
                 "--methods", "uio", "no_memory", "--lengths", "32", "--device", "cpu", "--out", str(tmp_path),
                 "--name", "ppl"]) == 0
    report = json.loads((tmp_path / "ppl.json").read_text())["perplexity"]
    for method, rows in ours.items():
        for i, text in enumerate(texts):
            tokens = lm.tok_encode(text)
            assert tokens[0] == lm.tokenizer.bos_token_id  # the tokenizer's BOS: the prefix, not scored
            assert len(tokens) > 4 * 16
            loglikelihood = float(rows[i][0])
            assert math.exp(-loglikelihood / (len(tokens) - 1)) == pytest.approx(
                report[method]["documents"][f"doc{i}"], rel=1e-6)
            picked, _ = direct_logprobs(lm.model, tokens, use_memory=method == "uio")
            assert loglikelihood == pytest.approx(float(picked.sum()), rel=1e-5)


def test_generate_until_equals_uio_ds_generate(lm, dirs, tmp_path, capsys):
    """Greedy generation through the harness is ``uio-ds generate``'s continuation, cut before the
    first stop string; equal-length prompts are generated as one batch."""
    from uio_ds.cli import main

    prompts = [SENTENCE * 5 + "And so", "Once upon a time, " * 4 + "there"]

    def ends_whole(n: int) -> bool:
        # uio-ds generate prints text once it decodes to whole characters: take a length where
        # the random model's last byte-level token completes one, so the printed text is all of it
        done = lm.generate_until([Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": n}), 0)
                                  for p in prompts], disable_tqdm=True)
        return not any(t.endswith("\ufffd") for t in done)

    length = next(n for n in range(12, 40) if ends_whole(n))
    printed = []
    for i, prompt in enumerate(prompts):
        path = tmp_path / f"prompt{i}.txt"
        path.write_text(prompt)
        capsys.readouterr()
        assert main(["generate", "--model", dirs["base"], "--uio", dirs["parts"], "--prompt-file", str(path),
                     "--max-new-tokens", str(length), "--device", "cpu"]) == 0
        printed.append(capsys.readouterr().out.removesuffix("\n"))  # stdout: the continuation, then a newline
    assert all(len(lm.tok_encode(p)) > 2 * 16 for p in prompts)  # read through memory
    stop = printed[0][4:6]  # a stop string that greedy decoding meets after four characters
    folder = dirs["root"] / "generate"
    records = [{"prompt": p, "answer": ""} for p in prompts + prompts[:1]]  # prompt 0 twice: a batch of two
    for name, until in (("uio_generate", []), ("uio_generate_stop", [stop])):
        write_task(folder, name, records, output_type="generate_until", doc_to_text="{{prompt}}",
                   doc_to_target="{{answer}}", generation_kwargs={"until": until, "max_gen_toks": length,
                                                                  "do_sample": False},
                   metric_list=[{"metric": "exact_match"}])
    results = evaluate(lm, folder, ["uio_generate", "uio_generate_stop"])
    assert [r[0] for r in responses(results, "uio_generate")] == [printed[0], printed[1], printed[0]]
    cut = printed[0].split(stop)[0]
    assert len(cut) < len(printed[0])
    assert [r[0] for r in responses(results, "uio_generate_stop")] == [cut, printed[1].split(stop)[0], cut]


def test_context_past_the_position_range_is_read_through_memory(dirs):
    """On a base with 64 positions, contexts of 150 tokens are read through memory; one longer than
    the model reads (220 tokens at l=16, m=4) is cut from the left, as the harness's models do."""
    lm = UIODSLM(base=dirs["short"], uio=dirs["short_parts"], device="cpu")
    assert lm.model.max_positions == 64 and lm.max_length == 220
    folder = dirs["root"] / "long"
    docs = [{"context": synthetic_text(k, seed=k), "choices": [" the", " a story about a cat"], "label": 0}
            for k in (7, 14)]
    write_task(folder, "uio_long", docs, **mc_fields())
    lengths = [len(lm.tok_encode(d["context"])) for d in docs]
    assert 64 < lengths[0] < 220 < lengths[1]
    assert lm.tokenizer.bos_token_id is not None and lm.tok_encode("x")[0] != lm.tokenizer.bos_token_id
    got = [pair for doc in responses(evaluate(lm, folder, ["uio_long"]), "uio_long") for pair in doc]
    want = [direct_pair(lm, lm.model, d["context"], c) for d in docs for c in d["choices"]]
    assert_same_function(torch.tensor([g[0] for g in got]), torch.tensor([w[0] for w in want]), lm.model.base.config)
    assert [g[1] for g in got] == [w[1] for w in want]


def test_runtime_options_reach_the_memory(dirs):
    """memory_window and recent_tokens change what the decoder reads: the harness's scores then
    equal ``uio-ds eval``'s own reading with those options (its per-segment code, not the stream)."""
    from uio_ds.eval.methods import UIOMethod

    lm = UIODSLM(base=dirs["base"], uio=dirs["parts"], device="cpu", memory_window=2, recent_tokens=16,
                 encode_batch_size=2, dtype="float32")
    config = lm.model.config
    assert (config.memory_window, config.recent_tokens, lm.max_length) == (2, 16, None)
    context, cont = SENTENCE * 6 + "Then", " it ran away over the hills"
    (got, _), = lm.loglikelihood([Instance("loglikelihood", {}, (context, cont), 0)], disable_tqdm=True)
    whole, ctx = lm.tok_encode(context + cont), lm.tok_encode(context)
    want = -sum(UIOMethod(lm.model).last_losses(torch.tensor([whole]), len(whole) - len(ctx)))
    assert got == pytest.approx(want, rel=1e-5)
    plain = direct_pair(lm, lm.model, context, cont)[0]  # every memory, no raw window
    assert got != pytest.approx(plain, rel=1e-3)


def test_bad_model_args_are_refused_before_loading(dirs, tiny_dirs, tmp_path):
    cases = [({"base": dirs["base"], "segmnt_length": 16}, "unknown model_args ['segmnt_length']"),
             ({}, "needs base=DIR"),
             ({"base": str(tmp_path / "none")}, "is not a directory"),
             ({"base": dirs["base"], "uio": str(tmp_path)}, "holds no uio_config.json"),
             ({"base": dirs["base"], "uio": dirs["parts"], "segment_length": 32}, "comes from the trained parts"),
             ({"base": dirs["base"], "memory_window": 2}, "give uio=DIR or drop memory_window"),
             ({"base": dirs["base"], "batch_size": "auto"}, "batch_size=auto is not supported"),
             ({"base": dirs["base"], "encode_batch_size": 0}, "encode_batch_size=0"),
             ({"base": dirs["base"], "dtype": "float64"}, "dtype='float64'"),
             ({"base": dirs["base"], "device": "tpu"}, "device 'tpu' is not a device name"),
             ({"base": dirs["base"], "chat_template": str(tmp_path / "t.jinja")}, "is not a file")]
    for args, message in cases:
        with pytest.raises(ModelArgsError, match="^[^\n]*" + message.replace("[", r"\[").replace("(", r"\(")):
            parse_model_args(args)
    with pytest.raises(ModelArgsError, match="recent_tokens=8 is not a multiple of segment_length=16"):
        UIODSLM(base=dirs["base"], uio=dirs["parts"], recent_tokens=8)
    with pytest.raises(ModelArgsError, match="trained on a different base model"):  # Llama parts, a Mistral base
        UIODSLM(base=tiny_dirs["mistral"], uio=dirs["parts"], device="cpu")
    with pytest.raises(ModelArgsError, match="segment_length=128 does not fit the base model's max_position_embeddings=64"):
        UIODSLM(base=dirs["short"], segment_length=128, device="cpu")
    # lm-eval passes --batch_size as text and its --device default whatever model_args say
    opts = parse_model_args({"base": dirs["base"], "batch_size": "3", "encode_batch_size": "all"})
    assert (opts.batch_size, opts.encode_batch_size, opts.device) == (3, None, "auto")


def test_chat_template_option_replaces_the_tokenizers(dirs, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    lm = UIODSLM(base=dirs["base"], segment_length=16, device="cpu", chat_template=str(template))
    text = lm.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "[user] hi\n[assistant] "
    assert lm.tokenizer_name.startswith(dirs["base"].replace("/", "__") + "__")


def test_command_line_runs_a_local_task(dirs, lm, tmp_path):
    """``uio-ds lm-eval`` is lm-eval's own command line with --model uio_ds: a local task from
    --include_path, results written where --output_path says, equal to the in-process run."""
    folder = tmp_path / "tasks"
    docs = [{"context": SENTENCE * 2 + "Then", "choices": [" it ran", " x"], "label": 0}]
    write_task(folder, "uio_cli_mc", docs, **mc_fields())
    env = dict(launcher_env(), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "uio_ds", "lm-eval", "--model", "uio_ds",
           "--model_args", f"base={dirs['base']},uio={dirs['parts']},device=cpu", "--tasks", "uio_cli_mc",
           "--include_path", str(folder), "--batch_size", "2", "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "out") for f in files]
    results = json.load(open(next(f for f in found if os.path.basename(f).startswith("results_"))))
    assert results["config"]["model"] == "uio_ds" and results["config"]["uio_ds_method"] == "uio"
    with open(next(f for f in found if os.path.basename(f).startswith("samples_uio_cli_mc"))) as f:
        sample = json.loads(f.readline())
    got = [float(r[0][0]) for r in sample["resps"]]
    want = [direct_pair(lm, lm.model, docs[0]["context"], c)[0] for c in docs[0]["choices"]]
    assert_same_function(torch.tensor(got), torch.tensor(want), lm.model.base.config)
    assert results["results"]["uio_cli_mc"]["acc,none"] == float(want[0] > want[1])


def test_command_line_names_a_bad_model_arg_in_one_line(monkeypatch, capsys):
    """What the model refuses comes out of ``uio-ds lm-eval`` as one ``error:`` line, exit status 2."""
    import lm_eval.__main__

    from uio_ds.eval.lm_eval_cli import main

    seen = []

    def harness():  # stands in for lm-eval's command line, which builds the model from model_args
        seen.append(list(sys.argv))
        UIODSLM.create_from_arg_string("base=/no/such/dir", {"device": "cuda:0", "batch_size": "1"})

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", harness)
    assert main(["--model", "uio_ds", "--tasks", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: base='/no/such/dir' is not a directory") and err.count("\n") == 1
    assert seen == [["uio-ds lm-eval", "--model", "uio_ds", "--tasks", "x"]]
