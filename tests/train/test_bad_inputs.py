"""A battery of hostile-but-realistic inputs to training, evaluation and generation.

Each case asserts the exit status, the key words of its one message (no traceback) and that
nothing was lost: a rejected training command is refused before the model or the data is
loaded (``Trainer.setup`` is never reached), writes nothing into a fresh output directory, and
leaves an earlier run's checkpoints, ``final/`` and metrics exactly as they were. The run
directory they are checked against is a real 2-rank run; the cases that need training itself
(signals, non-finite steps, kill-and-resume, a damaged checkpoint) run through the launcher
here and in test_train_e2e.py / test_signals.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import types

import pytest
from helpers import REPO, free_port, launcher_env

from uio_ds import train as train_entry
from uio_ds.cli import main as cli_main
from uio_ds.eval.run import main as eval_main
from uio_ds.train import checkpoint as ckpt
from uio_ds.train.trainer import Trainer


def _snapshot(folder: str) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (the lock file aside)."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha1(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def earlier_run(run_config, tmp_path_factory):
    """A finished 2-rank run with checkpoints at steps 1 and 2, final/ and metrics."""
    from test_train_e2e import launch

    config, _ = run_config
    out = str(tmp_path_factory.mktemp("battery") / "run")
    launch(config, out, "steps=2", "save_every=1", "keep_last=2")
    assert ckpt.complete_tags(os.path.join(out, "checkpoints")) == ["step00000001", "step00000002"]
    return out


@pytest.fixture
def no_setup(monkeypatch):
    """Reaching the model or the data fails the case: the problem had to be found before."""
    def refuse(self):
        raise AssertionError("Trainer.setup was reached: the problem was not found before loading")

    monkeypatch.setattr(Trainer, "setup", refuse)


def _model_copy(tiny: str, folder, drop=(), edit=None) -> str:
    os.makedirs(folder)
    for name in os.listdir(tiny):
        if not any(name.endswith(d) or name == d for d in drop):
            shutil.copy(os.path.join(tiny, name), folder)
    if edit:
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        cfg.update(edit)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
    return str(folder)


# (case, overrides, key words of the message); every one must exit 2 before loading anything
CONFIG_CASES = [
    ("lr_negative", ["optim.lr=-1"], ["optim.lr=-1", "must be > 0"]),
    ("lr_infinite", ["optim.lr=Infinity"], ["optim.lr=inf", "finite"]),
    ("betas_nan", ["optim.betas=[0.9, NaN]"], ["optim.betas[1]=nan", "finite"]),
    ("warmup_negative", ["optim.warmup_steps=-2"], ["optim.warmup_steps=-2"]),
    ("min_lr_ratio", ["optim.min_lr_ratio=2"], ["optim.min_lr_ratio=2", "[0, 1]"]),
    ("weight_decay", ["optim.weight_decay=-0.1"], ["optim.weight_decay=-0.1"]),
    ("grad_clip", ["optim.grad_clip=-1"], ["optim.grad_clip=-1"]),
    ("steps_zero", ["steps=0"], ["steps=0", ">= 1"]),
    ("steps_text", ["steps=many"], ["steps='many'"]),
    ("save_every", ["save_every=-1"], ["save_every=-1"]),
    ("keep_last", ["keep_last=0"], ["keep_last=0"]),
    ("max_bad_steps", ["max_bad_steps=0"], ["max_bad_steps=0"]),
    ("log_every", ["log_every=0"], ["log_every=0"]),
    ("unknown_key", ["optim.lrate=1"], ["unknown option(s) ['lrate']"]),
    ("unknown_section", ["trainer.steps=1"], ["unknown option(s) ['trainer']"]),
    ("algorithm_name", ["algorithm.name=rtrl"], ["algorithm.name='rtrl'"]),
    ("graph_mode", ["algorithm.graph_mode=disk"], ["algorithm.graph_mode='disk'"]),
    ("window_zero", ["algorithm.window=0"], ["algorithm.window=0"]),
    ("window_null", ["algorithm.window=null"], ["algorithm.window is null"]),
    ("documents_per_step", ["data.documents_per_step=0"], ["data.documents_per_step=0"]),
    ("min_tokens", ["data.min_tokens=1"], ["data.min_tokens=1"]),
    ("max_below_min", ["data.max_tokens=1"], ["data.max_tokens=1"]),
    ("autoencode_length", ["data.autoencode_tokens=16"], ["data.autoencode_tokens=16 must equal uio.segment_length"]),
    ("no_sources", ["data.sources=[]"], ["data.sources is empty"]),
    ("source_weight", ['data.sources=[{"path": "x.jsonl", "weight": -1}]'], ["weight=-1"]),
    ("source_same_fields", ['data.sources=[{"path": "x.jsonl", "completion_field": "text"}]'], ["equals text_field"]),
    ("source_glob", ['data.sources=[{"path": "/nope/*.jsonl"}]'], ["/nope/*.jsonl", "matches no file"]),
    ("source_missing", ['data.sources=[{"path": "/nope/a.jsonl"}]'], ["/nope/a.jsonl", "not found"]),
    ("source_suffix", ['data.sources=[{"path": "__TMP__/data.csv"}]'], ["unsupported type"]),
    ("source_empty", ['data.sources=[{"path": "__TMP__/empty.jsonl"}]'], ["empty.jsonl", "is empty"]),
    ("not_a_datasets_directory", ['data.sources=[{"path": "__TMP__"}]'], ["not one that datasets saved"]),
    ("segment_length", ["uio.segment_length=1"], ["segment_length=1"]),
    ("ratio_not_dividing", ["uio.compression_ratio=5"], ["compression_ratio=5 does not divide"]),
    ("ratio_above_length", ["uio.compression_ratio=64", "uio.segment_length=32"],
     ["compression_ratio=64"]),
    ("memory_window", ["uio.memory_window=0"], ["memory_window=0"]),
    ("memory_window_zero_training", ["uio.memory_window=0", "uio.recent_tokens=32", "uio.segment_length=32"],
     ["memory_window=0 reads no memory", "nothing the run trains"]),
    ("sink_tokens", ["uio.sink_tokens=-2"], ["sink_tokens=-2"]),
    ("dtype", ["uio.dtype=float8"], ["dtype"]),
    ("lora_nested_key", ["uio.encoder_lora.bogus=1"], ["encoder_lora: unknown option(s) ['bogus']"]),
    ("lora_not_object", ["uio.encoder_lora=5"], ["encoder_lora=5", "give an object"]),
    ("decoder_lora_not_object", ["uio.decoder_lora=7"], ["decoder_lora=7", "or null"]),
    ("lora_rank", ["uio.transfer_lora.rank=-1"], ["transfer_lora.rank=-1"]),
    ("lora_targets", ['uio.transfer_lora.target_modules=["q_proj"]'], ["not allowed here"]),
    ("unknown_uio_key", ["uio.ratio=8"], ["unknown option(s) ['ratio']"]),
    ("override_without_value", ["steps"], ["override 'steps'", "key.path=value"]),
    ("override_into_value", ["steps.x=1"], ["steps is not a section"]),
    ("model_path_missing", ["model_path=/nope/model"], ["/nope/model", "no config.json"]),
    ("max_tokens_past_positions", ["data.max_tokens=100000"], ["100000 tokens need", "max_position_embeddings",
                                                               "data.max_tokens"]),
    ("init_from_missing", ["init_from=/nope/parts"], ["init_from='/nope/parts'", "not a saved UIO model"]),
    ("every_problem_at_once", ['steps="ten"', 'optim.lr="fast"', "uio.segment_length=64.0"],
     ["3 problem(s)", "steps='ten'", "optim.lr='fast'", "uio.segment_length=64.0"]),
    ("fp16_on_cpu_ranks", ["uio.dtype=float16"], ["fp16 training on CPU ranks", "bfloat16"]),
    ("max_part_growth", ["max_part_growth=0.5"], ["max_part_growth=0.5", "> 1 or null"]),
]


@pytest.mark.parametrize("case, overrides, words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused_before_loading(run_config, tmp_path, capsys, no_setup, case, overrides, words):
    config, _ = run_config
    out = tmp_path / "out"
    (tmp_path / "data.csv").write_text("text\nIn the beginning\n")
    (tmp_path / "empty.jsonl").write_text("")
    overrides = [o.replace("__TMP__", str(tmp_path)) for o in overrides]
    code = train_entry.main(["--config", config, "--set", f"output_dir={out}", *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert all(w in err for w in words), err
    assert err.startswith("error:") and "Traceback" not in err
    assert not out.exists()  # nothing written


def _deepspeed_file(tmp_path, edit: dict | None = None, text: str | None = None) -> str:
    with open(os.path.join(REPO, "ds_configs", "zero2.json")) as f:
        data = json.load(f)
    data.update(edit or {})
    path = tmp_path / "ds.json"
    path.write_text(text if text is not None else json.dumps(data))
    return str(path)


DEEPSPEED_CASES = [
    ("not_json", None, "{ zero", ["not valid JSON"]),
    ("zero4", {"zero_optimization": {"stage": 4}}, None, ["zero_optimization.stage=4"]),
    ("zero3_prefetch", {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 1000}}, None,
     ["stage3_prefetch_bucket_size=1000", "set it to 0"]),
    ("zero3_persistence", {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10}}, None,
     ["stage3_param_persistence_threshold=10 is below the largest trainable parameter", "\"auto\""]),
    ("accumulation", {"gradient_accumulation_steps": 4}, None, ["gradient_accumulation_steps=4"]),
    ("scheduler", {"scheduler": {"type": "WarmupLR"}}, None, ["scheduler section"]),
    ("sgd", {"optimizer": {"type": "SGD", "params": {}}}, None, ["optimizer.type='SGD'"]),
    ("no_clipping", {"gradient_clipping": None}, None, ["gradient_clipping"]),
    ("lr_disagrees", {"optimizer": {"type": "AdamW", "params": {"lr": 0.5}}}, None, ["optimizer.params.lr=0.5"]),
    ("batch_disagrees", {"train_micro_batch_size_per_gpu": 7}, None, ["train_micro_batch_size_per_gpu=7"]),
    ("fp16_on_cpu", {"fp16": {"enabled": True}}, None, ["fp16"]),
]


@pytest.mark.parametrize("case, edit, text, words", DEEPSPEED_CASES, ids=[c[0] for c in DEEPSPEED_CASES])
def test_bad_deepspeed_config_is_refused_before_loading(run_config, tmp_path, capsys, no_setup, case, edit, text,
                                                        words):
    config, _ = run_config
    ds = _deepspeed_file(tmp_path, edit, text)
    if case == "no_clipping":
        data = json.loads(open(ds).read())
        del data["gradient_clipping"]
        open(ds, "w").write(json.dumps(data))
    code = train_entry.main(["--config", config, "--deepspeed", ds, "--set", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and all(w in err for w in words), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


MODEL_CASES = [
    ("no_weights", {"drop": (".safetensors",)}, ["holds no weights"]),
    ("no_tokenizer", {"drop": ("tokenizer.json", "tokenizer_config.json")}, ["holds no tokenizer"]),
    ("unsupported_architecture", {"edit": {"model_type": "gpt2"}}, ["model_type", "gpt2"]),
    ("one_layer", {"edit": {"num_hidden_layers": 1}}, ["1 layer(s)"]),
    ("short_context", {"edit": {"max_position_embeddings": 24}}, ["positions for the encoder"]),
]


@pytest.mark.parametrize("case, change, words", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_unfit_model_directory_is_refused_before_loading(run_config, tiny_dirs, tmp_path, capsys, no_setup, case,
                                                         change, words):
    config, _ = run_config
    model = _model_copy(tiny_dirs["llama"], tmp_path / "model", change.get("drop", ()), change.get("edit"))
    code = train_entry.main(["--config", config, "--set", f"output_dir={tmp_path / 'out'}", f"model_path={model}"])
    err = capsys.readouterr().err
    assert code == 2 and all(w in err for w in words), err
    assert "Traceback" not in err


INIT_FROM_CASES = [
    # fewer <mem> slots than the parts were trained with: a ratio may only be lowered to a divisor
    ("fewer_slots", "uio.compression_ratio=16", ["compression_ratio", "divides the saved 8"]),
    # a larger rank over trained parts must keep alpha / rank (the update's scale): the message says so
    ("rank_without_alpha", "uio.encoder_lora.rank=64", ["encoder_lora", "alpha / rank unchanged"]),
]


@pytest.mark.parametrize("case, change, words", INIT_FROM_CASES, ids=[c[0] for c in INIT_FROM_CASES])
def test_init_from_that_does_not_fit_is_refused_before_loading(run_config, earlier_run, tmp_path, capsys, no_setup,
                                                               case, change, words):
    config, _ = run_config
    code = train_entry.main(["--config", config, "--set", f"output_dir={tmp_path / 'out'}",
                             f"init_from={earlier_run}/final", change])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit the config's 'uio'" in err and all(w in err for w in words), err


def test_missing_corpus_split_is_refused_before_loading(run_config, tmp_path, capsys, no_setup):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.json").write_text("{}")
    (corpus / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "eval"]}))
    config, _ = run_config
    code = train_entry.main(["--config", config, "--set", f"output_dir={tmp_path / 'out'}",
                             f'data.sources=[{{"path": "{corpus}", "split": "dev"}}]'])
    err = capsys.readouterr().err
    assert code == 2 and "has no split 'dev'" in err and "['train', 'eval']" in err, err


# What an earlier run's directory must survive: (case, extra arguments, key words)
RUN_DIR_CASES = [
    ("fresh_run_into_it", [], ["already holds a run", "--resume auto", "--overwrite"]),
    ("overwrite_and_resume", ["--overwrite", "--resume", "auto"], ["contradict"]),
    ("one_rank_resumes_two", ["--resume", "auto"], ["written by 2 rank(s) and this run has 1"]),
    ("resume_missing_path", ["--resume", "/nope/checkpoints"], ["no complete checkpoint"]),
    ("resume_latest_elsewhere", ["--resume", "latest", "--set", "output_dir=__NEW__"], ["no complete checkpoint"]),
    ("locked", ["--resume", "auto"], ["is in use by pid"]),
    ("lock_unreadable", ["--resume", "auto"], ["cannot be read"]),
]


@pytest.mark.parametrize("case, extra, words", RUN_DIR_CASES, ids=[c[0] for c in RUN_DIR_CASES])
def test_an_earlier_run_survives_refused_commands(run_config, earlier_run, tmp_path, capsys, no_setup, monkeypatch,
                                                  case, extra, words):
    config, _ = run_config
    run = str(tmp_path / "run")
    shutil.copytree(earlier_run, run)
    if case == "locked":
        with open(os.path.join(run, ".lock"), "w") as f:
            json.dump({"host": __import__("socket").gethostname(), "pid": os.getpid(), "started": 0}, f)
    if case == "lock_unreadable":
        with open(os.path.join(run, ".lock"), "w") as f:
            f.write("{not json")
    if case != "one_rank_resumes_two":
        monkeypatch.setenv("WORLD_SIZE", "2")  # as the launcher sets it for the 2-rank run
    before = _snapshot(run)
    extra = [e.replace("__NEW__", str(tmp_path / "new")) for e in extra]
    try:
        code = train_entry.main(["--config", config, "--set", f"output_dir={run}", *extra])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and all(w in err for w in words), err
    assert "Traceback" not in err and _snapshot(run) == before


def test_trajectory_change_on_resume_is_refused_and_rate_change_is_not(run_config, earlier_run, tmp_path, capsys,
                                                                       no_setup, monkeypatch):
    config, _ = run_config
    run = str(tmp_path / "run")
    shutil.copytree(earlier_run, run)
    before = _snapshot(run)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = train_entry.main(["--config", config, "--set", f"output_dir={run}", "data.seed=5", "algorithm.window=3",
                             "--resume", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "data.seed: 0 -> 5" in err and "algorithm.window: 2 -> 3" in err, err
    assert "--allow-config-change" in err and _snapshot(run) == before
    with pytest.raises(AssertionError, match="Trainer.setup was reached"):  # allowed: goes on to set up
        train_entry.main(["--config", config, "--set", f"output_dir={run}", "optim.lr=0.01", "steps=9",
                          "--resume", "auto"])


def _edit_markers(run: str, **changes) -> None:
    """Rewrite every checkpoint's COMPLETE marker with ``changes`` (a function of the old value, or a value)."""
    for tag in ckpt.complete_tags(os.path.join(run, "checkpoints")):
        path = os.path.join(run, "checkpoints", tag, ckpt.COMPLETE)
        with open(path) as f:
            info = json.load(f)
        for key, change in changes.items():
            info[key] = change(info[key]) if callable(change) else change
        with open(path, "w") as f:
            json.dump(info, f)


def test_resume_over_changed_data_is_refused(run_config, earlier_run, tmp_path, capsys, no_setup, monkeypatch):
    """The checkpoint records each source's content digest: data changed since (here the recorded
    digest of the first source differs, as a reordered file's would) is a change of the run's
    trajectory, refused before loading unless --allow-config-change."""
    config, root = run_config
    run = str(tmp_path / "run")
    shutil.copytree(earlier_run, run)
    name = str(root / "docs.jsonl")
    _edit_markers(run, data=lambda digests: {**digests, name: "0" * 16})
    before = _snapshot(run)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = train_entry.main(["--config", config, "--set", f"output_dir={run}", "--resume", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and f"data source {name}: its files changed" in err and "--allow-config-change" in err, err
    assert "Traceback" not in err and _snapshot(run) == before
    with pytest.raises(AssertionError, match="Trainer.setup was reached"):
        train_entry.main(["--config", config, "--set", f"output_dir={run}", "--resume", "auto", "--allow-config-change"])


def test_resume_under_another_zero_stage_is_refused(run_config, earlier_run, tmp_path, capsys, no_setup,
                                                    monkeypatch):
    config, _ = run_config
    run = str(tmp_path / "run")
    shutil.copytree(earlier_run, run)
    _edit_markers(run, zero_stage=3)  # as a ZeRO-3 run writes it
    before = _snapshot(run)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for extra in ([], ["--allow-config-change"]):  # no flag lets DeepSpeed load another stage's partitions
        code = train_entry.main(["--config", config, "--set", f"output_dir={run}", "--resume", "auto", *extra])
        err = capsys.readouterr().err
        assert code == 2 and "written under ZeRO stage 3 and this run uses stage 2" in err, err
        assert "--deepspeed zero3" in err and _snapshot(run) == before


def test_damaged_checkpoints(run_config, earlier_run, tmp_path, capsys, no_setup, monkeypatch):
    """A file of a complete checkpoint damaged after the fact: named when the checkpoint is asked
    for by its directory; passed over for the previous one by --resume auto; every one damaged:
    refused."""
    config, _ = run_config
    run = str(tmp_path / "run")
    shutil.copytree(earlier_run, run)
    monkeypatch.setenv("WORLD_SIZE", "2")
    latest = os.path.join(run, "checkpoints", "step00000002")
    victim = os.path.join(latest, "trainer_state_rank1.pt")
    with open(victim, "r+b") as f:
        f.truncate(100)
    code = train_entry.main(["--config", config, "--set", f"output_dir={run}", "--resume", latest])
    err = capsys.readouterr().err
    assert code == 2 and victim in err and "cannot be loaded" in err, err
    skipped: list[str] = []
    assert ckpt.resume_target("auto", os.path.join(run, "checkpoints"), skipped)[1] == "step00000001"
    assert victim in skipped[0]
    with open(os.path.join(run, "checkpoints", "step00000001", "trainer_state_rank0.pt"), "r+b") as f:
        f.truncate(10)
    code = train_entry.main(["--config", config, "--set", f"output_dir={run}", "--resume", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint in" in err and "can be loaded" in err, err


def test_checkpoint_write_failure_names_a_full_disk(tmp_path):
    import errno

    (tmp_path / "checkpoints").mkdir()
    message = ckpt.write_failure(OSError(errno.ENOSPC, "No space left on device"), str(tmp_path / "checkpoints"),
                                 "checkpoint step00000004")
    assert "the disk is full (No space left on device" in message and "--resume auto" in message
    other = ckpt.write_failure(PermissionError(13, "Permission denied"), str(tmp_path / "checkpoints"), "final/")
    assert "PermissionError" in other and "disk is full" not in other


EVAL_CASES = [
    ("uio_without_parts", ["--tasks", "passkey", "--methods", "uio"], ["method uio needs trained parts"]),
    ("parts_missing", ["--uio", "/nope/parts"], ["/nope/parts", "not a saved UIO model"]),
    ("no_utf8_record", ["--uio", "__PARTS__", "--data", "__TMP__/latin1.jsonl"],
     ["latin1.jsonl", "no usable document", "UTF-8"]),
    ("empty_file", ["--uio", "__PARTS__", "--data", "__TMP__/empty.jsonl"], ["empty.jsonl", "is empty"]),
    ("malformed_longbench", ["--uio", "__PARTS__", "--tasks", "longbench", "--longbench", "__TMP__/lb.jsonl"],
     ["lb.jsonl"]),
    ("parts_and_shape", ["--uio", "__PARTS__", "--segment-length", "32"], ["come from --uio"]),
    ("longbench_without_file", ["--uio", "__PARTS__", "--tasks", "longbench"], ["needs --longbench FILE"]),
    ("absent_device", ["--uio", "__PARTS__", "--device", "cuda:99"], ["--device", "'cuda:99'", "CUDA device"]),
    ("not_a_device", ["--uio", "__PARTS__", "--device", "gpu7"], ["--device", "not a device name"]),
    ("ae_given_nothing", ["--uio", "__PARTS__", "--tasks", "autoencode", "--ae-given", "0"],
     ["--ae-given 0", "first token"]),
    ("ae_given_everything", ["--uio", "__PARTS__", "--tasks", "autoencode", "--ae-given", "32"],
     ["--ae-given 32", "32-token segments"]),
]


@pytest.mark.parametrize("case, args, words", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_bad_evaluation_arguments(tiny_dirs, earlier_run, tmp_path, capsys, monkeypatch, case, args, words):
    """One ``error:`` line, exit 2, before the model loads, nothing written."""
    from uio_ds.model.memory_model import UIOMemoryModel

    data = tmp_path / "data"
    data.mkdir()
    (data / "latin1.jsonl").write_bytes('{"text": "caf\u00e9 cr\u00e8me"}\n'.encode("latin-1") * 3)
    (data / "empty.jsonl").write_text("")
    (data / "lb.jsonl").write_text('{"context": "text"}\n')
    args = [a.replace("__PARTS__", os.path.join(earlier_run, "final")).replace("__TMP__", str(data)) for a in args]

    def refuse(*_, **__):
        raise AssertionError("the model was loaded: the problem was not found before")

    monkeypatch.setattr(UIOMemoryModel, "from_pretrained", refuse)
    out = tmp_path / "out"
    code = eval_main(["--model", tiny_dirs["llama"], "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_evaluation_names_the_bad_records_it_skips(tiny_dirs, tmp_path, capsys):
    """Bad records are skipped, counted and shown as training shows them, and the rest is evaluated."""
    from uio_ds.formats import synthetic_text

    path = tmp_path / "mixed.jsonl"
    with open(path, "wb") as f:
        for i in range(3):
            f.write((json.dumps({"text": synthetic_text(30, seed=i)}) + "\n").encode())
        f.write(b"{broken\n")
        f.write('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    code = eval_main(["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8",
                      "--data", str(path), "--tasks", "perplexity", "--methods", "no_memory", "--lengths", "64",
                      "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "skipped 2 bad record(s)" in out and f"{path}:4" in out, out


GENERATE_CASES = [
    ("top_k", ["--sample", "--top-k", "-5"], "--top-k -5"),
    ("top_p", ["--sample", "--top-p", "0"], "--top-p 0.0"),
    ("temperature", ["--sample", "--temperature", "0"], "--temperature 0.0"),
    ("max_new_tokens", ["--max-new-tokens", "0"], "--max-new-tokens 0"),
    ("sampling_without_sample", ["--top-k", "5"], "add --sample"),
    ("absent_device", ["--device", "cuda:99"], "--device: device 'cuda:99'"),
    ("max_prompt_tokens", ["--max-prompt-tokens", "0"], "--max-prompt-tokens 0: must be >= 1"),
]


@pytest.mark.parametrize("case, args, words", GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_bad_generation_arguments(tiny_dirs, tmp_path, capsys, case, args, words):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["generate", "--model", tiny_dirs["llama"], "--prompt-file", "-", *args])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_a_prompt_file_that_is_not_utf8_is_named(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e.".encode("latin-1"))
    code = cli_main(["generate", "--model", tiny_dirs["llama"], "--prompt-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "not UTF-8" in err and "Traceback" not in err, err


@pytest.mark.parametrize("ids, words", [([[5, 10**6]], "must be in [0, "), ([[5, -3]], "got -3"),
                                        ([[5.0, 6.0]], "must be integers")])
def test_token_ids_outside_the_vocabulary_are_refused(tiny_dirs, ids, words):
    """generate(), forward() and compress() check their ids (torch would raise an IndexError deep in
    the embedding on the CPU, and a device-side assert on CUDA)."""
    import torch
    from helpers import load

    from uio_ds.model import generate

    model = load(tiny_dirs["llama"])
    ids = torch.tensor(ids)
    with pytest.raises(ValueError, match=re.escape(words)):
        generate(model, ids, 2)
    with pytest.raises(ValueError, match=re.escape(words)):
        model(ids)


def test_diverged_or_untrained_parts_are_not_exported(tiny_dirs):
    """A run whose every step was skipped, or whose parts grew far past their initial scale (lr=1e9
    took them from 0.1 to 2e9 in the battery), stops without export unless asked."""
    import torch
    from helpers import load

    from uio_ds.train.stopping import TrainingStopped

    trainer = Trainer.__new__(Trainer)
    trainer.model = load(tiny_dirs["llama"])
    trainer.config = types.SimpleNamespace(max_part_growth=1000.0)
    trainer.checkpoints = ckpt.Checkpoints("/nope", 0, 1, 1)
    trainer.initial_scale = trainer._largest_part_value()
    trainer._check_parts(steps=5, skipped=4)  # trained: fine
    with pytest.raises(TrainingStopped, match="every one of the 5 steps of this run was skipped"):
        trainer._check_parts(steps=5, skipped=5)
    with torch.no_grad():
        trainer.model.mem_embeddings.mul_(2e4)
    with pytest.raises(TrainingStopped, match="the run diverged.*max_part_growth=null"):
        trainer._check_parts(steps=5, skipped=0)
    trainer.config = types.SimpleNamespace(max_part_growth=None)
    trainer._check_parts(steps=5, skipped=0)  # asked to export anyway


@pytest.mark.slow
def test_resume_passes_over_a_damaged_checkpoint(run_config, earlier_run, tmp_path):
    """Through the launcher: the latest checkpoint's shard is damaged; --resume auto names the file,
    resumes from the previous complete checkpoint and finishes."""
    config, _ = run_config
    run = str(tmp_path / "run")
    shutil.copytree(earlier_run, run)
    latest = os.path.join(run, "checkpoints", "step00000002")
    shard = next(os.path.join(latest, f) for f in sorted(os.listdir(latest)) if "optim_states" in f)
    with open(shard, "r+b") as f:
        f.truncate(64)
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
           os.path.join(REPO, "launch", "train.py"), "--config", config, "--set", f"output_dir={run}", "steps=3",
           "save_every=1", "keep_last=2", "--resume", "auto"]
    proc = subprocess.run(cmd, env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert f"{shard}" in text and "resuming from the previous complete checkpoint" in text
    assert f"resumed from {os.path.join(run, 'checkpoints', 'step00000001')} at step 1" in text
    assert ckpt.latest_tag(os.path.join(run, "checkpoints")) == "step00000003"


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_its_last_checkpoint_intact(run_config, tmp_path):
    """A 4 MiB tmpfs as output directory fills up after about 30 checkpoints of the tiny run: the
    run stops with one line saying the disk is full, and `latest` names the last complete
    checkpoint. Needs permission to mount (root with CAP_SYS_ADMIN); skipped otherwise."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        config, _ = run_config
        run = str(disk / "run")
        cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
               os.path.join(REPO, "launch", "train.py"), "--config", config, "--set", f"output_dir={run}",
               "steps=200", "save_every=1", "keep_last=1000"]
        proc = subprocess.run(cmd, env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "the disk is full (No space left on device" in text, text[-3000:]
        last = ckpt.latest_tag(os.path.join(run, "checkpoints"))
        assert last is not None and f"the last complete checkpoint is {os.path.join(run, 'checkpoints', last)}" in text
        assert ckpt.unreadable(os.path.join(run, "checkpoints"), last) is None
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    """A resumed run (or one that restarts because no checkpoint was complete) drops the records
    after its step, so metrics.jsonl never reads 1, 2, 3, 4, 1, 2, ..."""
    from uio_ds.train.metrics import cut_back

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    assert cut_back(str(tmp_path), 2) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert cut_back(str(tmp_path), 0) == 2 and path.read_text() == ""
    assert cut_back(str(tmp_path / "none"), 3) == 0
