"""The Table 2 recipe's summary reads the evaluation and training outputs it claims to report."""

import importlib.util
import json
import os
import sys

import pytest
from helpers import REPO, small_config


def _summary_module(name: str = "table2_summary"):
    """A recipe's summary script as a module; its folder is importable, as when it runs as a script."""
    folder = os.path.join(REPO, "launch", "recipes")
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def _evaluation_setup(tiny_dirs, tmp_path):
    """launch/eval.py's main, its common arguments over three generated documents and untrained
    tiny parts (l=32, ratio 8), and the results and runs directories."""
    from uio_ds.eval.run import main as evaluate
    from uio_ds.formats import synthetic_text

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": synthetic_text(60, seed=i)}) for i in range(3)) + "\n")
    results, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8",
              "--data", str(docs), "--out", str(results)]
    return evaluate, common, results, runs


def _write_metrics(run, losses, seconds: float, tokens: int) -> None:
    """A training run's metrics.jsonl with the given losses, one step each."""
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "loss": v, "seconds": seconds, "tokens": tokens, "skipped": False}) + "\n"
        for i, v in enumerate(losses)))


def test_summary_collects_evaluations_runs_and_times(tiny_dirs, tmp_path, capsys):
    evaluate, common, results, runs = _evaluation_setup(tiny_dirs, tmp_path)
    assert evaluate(common + ["--tasks", "perplexity", "--methods", "uio", "no_memory", "--lengths", "64", "128",
                              "--name", "smollm2_recipe_perplexity"]) == 0
    assert evaluate(common + ["--tasks", "passkey", "--methods", "uio", "no_memory", "--passkey-lengths", "160", "224",
                              "--passkey-depths", "0.2", "0.8", "--passkey-trials", "1",
                              "--name", "smollm2_recipe_passkey"]) == 0
    assert evaluate(common + ["--tasks", "perplexity", "--methods", "uio", "no_memory", "--lengths", "64",
                              "--name", "smollm2_recipe_ablation_reference"]) == 0
    assert evaluate(common + ["--tasks", "perplexity", "--methods", "uio", "--lengths", "64", "128",
                              "--memory-window", "2", "--name", "smollm2_recipe_perplexity_window"]) == 0
    _write_metrics(runs / "main", [4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5], seconds=2.0, tokens=100)
    times = tmp_path / "times.tsv"
    times.write_text("1. main training\t120\n2. perplexity\t30\n")

    mod = _summary_module()
    assert mod.main(["--results", str(results), "--runs", str(runs), "--times", str(times)]) == 0
    s = json.loads((results / "smollm2_recipe.json").read_text())
    ppl = json.loads((results / "smollm2_recipe_perplexity.json").read_text())["perplexity"]
    for name in ("uio", "no_memory"):
        assert s["perplexity"][name]["segments_2_to_T"] == ppl[name]["later_perplexity"]
        assert s["perplexity"][name]["by_length_segments_2_to_T"]["128"] == ppl[name]["by_length"]["128"]["later_perplexity"]
    window = json.loads((results / "smollm2_recipe_perplexity_window.json").read_text())["perplexity"]["uio"]
    assert s["perplexity"]["uio_window2"]["segments_2_to_T"] == window["later_perplexity"]
    # the documents run past 3 segments of 32 tokens: a 2-memory window changes their scores
    assert window["later_perplexity"] != pytest.approx(ppl["uio"]["later_perplexity"], rel=1e-4)
    pk = json.loads((results / "smollm2_recipe_passkey.json").read_text())["passkey"]["methods"]["uio"]
    assert s["passkey"]["methods"]["uio"]["accuracy_by_length"] == [sum(r) / 2 for r in pk["accuracy"]]
    # losses averaged over the first and last quarter (2 steps each)
    assert s["main_run"]["loss_first"] == pytest.approx(3.5) and s["main_run"]["loss_last"] == pytest.approx(0.5)
    assert s["stages_s"] == {"1. main training": 120, "2. perplexity": 30} and s["total_s"] == 150
    assert list(s["ablations"]) == ["reference"] and "no_memory" in s["ablations"]["reference"]
    assert (results / "smollm2_recipe_ablations.png").exists()
    out = capsys.readouterr().out
    assert "segments 2..T" in out and "passkey exact match" in out


def test_summary_without_results_says_what_to_run(tmp_path, capsys):
    assert _summary_module().main(["--results", str(tmp_path), "--runs", str(tmp_path)]) == 1
    assert "make real-recipe" in capsys.readouterr().err


def test_tiny_summary_reports_the_evaluations(tiny_dirs, tmp_path, capsys):
    evaluate, common, results, runs = _evaluation_setup(tiny_dirs, tmp_path)
    for name in ("tiny_recipe_passkey", "tiny_recipe_passkey_frozen_decoder"):
        assert evaluate(common + ["--tasks", "passkey", "--methods", "uio", "no_memory", "--passkey-lengths", "153",
                                  "185", "--passkey-depths", "0.0", "--passkey-trials", "2", "--name", name]) == 0
    assert evaluate(common + ["--tasks", "perplexity", "--methods", "uio", "no_memory", "--lengths", "64", "128",
                              "--name", "tiny_recipe_perplexity"]) == 0
    assert evaluate(common + ["--tasks", "autoencode", "--ae-segments", "4", "--name", "tiny_recipe_autoencode_ratio8"]) == 0
    _write_metrics(runs / "recall", [2.0, 2.0, 1.0, 0.2], seconds=0.5, tokens=56)

    mod = _summary_module("tiny_summary")
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "tiny_recipe.json").read_text())
    pk = json.loads((results / "tiny_recipe_passkey.json").read_text())["passkey"]["methods"]
    assert s["passkey"]["decoder_lora"]["methods"]["uio"]["answer_loss_by_length"] == [r[0] for r in pk["uio"]["answer_loss"]]
    assert mod._segments(s["passkey"]["decoder_lora"]) == [5, 6]  # 153 and 185 tokens of 32-token segments
    ppl = json.loads((results / "tiny_recipe_perplexity.json").read_text())["perplexity"]
    assert s["perplexity"]["no_memory"]["by_segment"] == ppl["no_memory"]["by_segment"]
    ae = json.loads((results / "tiny_recipe_autoencode_ratio8.json").read_text())["autoencode"]
    assert s["autoencode"] == {"ratio8": {"bleu4": ae["bleu4"], "rouge_l": ae["rouge_l"], "segments": 4,
                                          "memory_tokens": 4}}
    assert s["training"]["recall"]["loss_last"] == 0.2 and s["training"]["books"] is None
    assert (results / "tiny_recipe.png").exists()
    out = capsys.readouterr().out
    assert "pass key in segment 1" in out and "auto-encoding" in out
    assert mod.main(["--results", str(tmp_path / "none"), "--runs", str(runs)]) == 1


def test_passkey_specialist_summary_reports_autoencoding_and_passkey(tiny_dirs, tmp_path, capsys):
    evaluate, common, results, runs = _evaluation_setup(tiny_dirs, tmp_path)
    for name in ("smollm2_memory_ae_stepwise_ratio8", "smollm2_memory_ae_appended_ratio8"):
        assert evaluate(common + ["--tasks", "autoencode", "--ae-segments", "3", "--name", name]) == 0
    assert evaluate(common + ["--tasks", "passkey", "--methods", "uio", "no_memory", "--passkey-lengths", "160", "224",
                              "--passkey-depths", "0.5", "--passkey-trials", "1",
                              "--name", "smollm2_memory_passkey_short"]) == 0
    _write_metrics(runs / "ae_stepwise_ratio8", [5.0, 4.0, 3.0, 2.0], seconds=1.0, tokens=60)

    mod = _summary_module("passkey_specialist_summary")
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_memory.json").read_text())
    ae = json.loads((results / "smollm2_memory_ae_stepwise_ratio8.json").read_text())["autoencode"]
    got = s["autoencode"]["ae_stepwise_ratio8"]
    assert (got["rouge_l"], got["bleu4"], got["loss"], got["no_memory"]) == (ae["rouge_l"], ae["bleu4"], ae["loss"],
                                                                            ae["no_memory"])
    assert got["layout"] == "appended" and got["memory_tokens"] == 4 and got["segments"] == 3
    assert (got["token_accuracy"], got["correct_prefix"]) == (ae["token_accuracy"], ae["correct_prefix"])
    assert list(s["autoencode"]) == ["ae_stepwise_ratio8", "ae_appended_ratio8"]
    pk = json.loads((results / "smollm2_memory_passkey_short.json").read_text())["passkey"]["methods"]
    assert s["passkey"]["passkey_short"]["methods"]["no_memory"]["accuracy_by_length"] == \
        [r[0] for r in pk["no_memory"]["accuracy"]]
    assert s["training"]["ae_stepwise_ratio8"]["loss_last"] == 2.0 and s["training"]["ae_long"] is None
    assert (results / "smollm2_memory.png").exists()
    out = capsys.readouterr().out
    assert "auto-encoding of held-out book segments" in out and "pass key (memory + decoder LoRA" in out
    assert mod.main(["--results", str(tmp_path / "none"), "--runs", str(runs)]) == 1
    assert "make passkey-specialist-recipe" in capsys.readouterr().err


def test_levers_summary_reports_each_arm_against_the_baselines(tiny_dirs, tmp_path, capsys):
    from transformers import AutoTokenizer

    from uio_ds.data.generators.facts import write_fact_jsonl

    evaluate, common, results, runs = _evaluation_setup(tiny_dirs, tmp_path)
    facts = tmp_path / "facts.jsonl"
    write_fact_jsonl(str(facts), 3, AutoTokenizer.from_pretrained(tiny_dirs["llama"]), [240], ["story"],
                     templates="held_out", log=lambda _: None)
    tasks = ["--tasks", "perplexity", "facts", "--facts", str(facts), "--lengths", "64", "128"]
    assert evaluate(common + tasks + ["--methods", "no_memory", "streaming", "full",
                                      "--name", "smollm2_levers_baselines"]) == 0
    assert evaluate(common + tasks + ["--methods", "uio", "--name", "smollm2_levers_distill"]) == 0
    fluency = ["--tasks", "fluency", "--fluency-prompt", "64", "--fluency-tokens", "8"]
    assert evaluate(common + fluency + ["--methods", "uio", "--name", "smollm2_levers_distill_fluency"]) == 0
    assert evaluate(common + fluency + ["--methods", "full", "--name", "smollm2_levers_baselines_fluency"]) == 0
    # the sinks arm's raw reading without memory: the window baseline
    raw = ["--memory-window", "0", "--recent-tokens", "32", "--sink-tokens", "4"]
    assert evaluate(common + tasks + raw + ["--methods", "uio", "--name", "smollm2_levers_window"]) == 0
    _write_metrics(runs / "distill", [3.0, 2.0, 1.5, 1.0], seconds=2.0, tokens=100)
    # an arm trained in two stages (auto-encoding, then the next-token loss): both runs reported
    (results / "smollm2_levers_ae_then_lm.json").write_text((results / "smollm2_levers_distill.json").read_text())
    _write_metrics(runs / "ae_warm", [5.0, 4.0], seconds=1.0, tokens=64)
    _write_metrics(runs / "ae_then_lm", [3.0, 2.5, 2.0, 2.0], seconds=3.0, tokens=100)
    # the decoder without memory again on other records: arms compare with it on their own records
    other = tmp_path / "other_facts.jsonl"
    write_fact_jsonl(str(other), 2, AutoTokenizer.from_pretrained(tiny_dirs["llama"]), [240], ["story"],
                     templates="held_out", seed=7, log=lambda _: None)
    assert evaluate(common + ["--tasks", "facts", "--facts", str(other), "--methods", "no_memory",
                              "--name", "smollm2_levers_baselines_facts"]) == 0

    mod = _summary_module("levers_summary")
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_levers.json").read_text())
    arm = json.loads((results / "smollm2_levers_distill.json").read_text())
    base = json.loads((results / "smollm2_levers_baselines.json").read_text())
    got = s["arms"]["distill"]
    assert list(s["arms"]) == ["distill", "ae_then_lm"] and got["training"]["seconds_per_step"] == 2.0
    two = s["arms"]["ae_then_lm"]
    assert (two["training"]["steps"], two["warm_start"]["steps"], two["warm_start"]["loss_first"]) == (4, 2, 5.0)
    assert "warm_start" not in got
    for n in ("64", "128"):
        want = arm["perplexity"]["uio"]["by_length"][n]["later_perplexity"]
        none = base["perplexity"]["no_memory"]["by_length"][n]["later_perplexity"]
        full = base["perplexity"]["full"]["by_length"][n]["later_perplexity"]
        assert got["perplexity"][n] == want
        assert got["gap_closed"][n] == pytest.approx((none - want) / (none - full))
    assert got["facts"]["n"] == 3 and got["kv_entries"] == arm["kv_entries"]["uio"]
    # facts: the baseline row on the records evaluated last, the arm against no memory on its own
    first_none = base["facts"]["methods"]["no_memory"]["cells"]["all"]
    none = s["baselines"]["no_memory"]
    assert none["facts"]["n"] == 2 and none["facts_other_records"]["n"] == 3
    assert none["facts"]["records_sha1"] != got["facts"]["records_sha1"] == none["facts_other_records"]["records_sha1"]
    assert got["facts"]["over_no_memory"] == pytest.approx({
        "accuracy": got["facts"]["accuracy"] - first_none["accuracy"],
        "answer_loss": first_none["answer_loss"] - got["facts"]["answer_loss"]})
    assert none["facts"]["over_no_memory"] == {"accuracy": 0.0, "answer_loss": 0.0}
    fluency = json.loads((results / "smollm2_levers_distill_fluency.json").read_text())["fluency"]["methods"]["uio"]
    assert got["fluency"]["judge_perplexity"] == fluency["judge_perplexity"]
    full = json.loads((results / "smollm2_levers_baselines_fluency.json").read_text())["fluency"]["methods"]["full"]
    assert got["fluency"]["ratio_to_full"] == pytest.approx(fluency["judge_perplexity"] / full["judge_perplexity"])
    assert s["baselines"]["full"]["fluency"]["ratio_to_full"] == pytest.approx(1.0)
    assert s["baselines"]["streaming"]["fluency"] is None  # not evaluated: blank, not invented
    window = json.loads((results / "smollm2_levers_window.json").read_text())
    assert window["config"]["sink_tokens"] == 4 and window["config"]["memory_window"] == 0
    assert s["baselines"]["window"]["perplexity"]["128"] == window["perplexity"]["uio"]["by_length"]["128"]["later_perplexity"]
    # 4 sinks + 32 raw tokens + a segment of 32 at most, no memory
    assert s["baselines"]["window"]["kv_entries"]["128"] == 4 + 32 + 32
    assert (results / "smollm2_levers.png").exists() and "distill: distillation" in capsys.readouterr().out
    assert mod.main(["--results", str(tmp_path / "none"), "--runs", str(runs)]) == 1
    assert "make levers-recipe" in capsys.readouterr().err


def test_memory_summary_reads_the_release_reading_beside_its_window(tiny_dirs, tmp_path, capsys):
    from transformers import AutoTokenizer

    from uio_ds.data.generators.facts import write_fact_jsonl

    evaluate, common, results, runs = _evaluation_setup(tiny_dirs, tmp_path)
    facts = tmp_path / "facts.jsonl"
    write_fact_jsonl(str(facts), 2, AutoTokenizer.from_pretrained(tiny_dirs["llama"]), [240], ["story"],
                     templates="held_out", log=lambda _: None)
    tasks = ["--tasks", "perplexity", "facts", "--facts", str(facts), "--lengths", "64"]
    assert evaluate(common + tasks + ["--methods", "no_memory", "streaming", "full",
                                      "--name", "smollm2_levers_baselines"]) == 0
    # the release's reading (1 memory + 32 raw tokens + 4 sinks + a segment: 72 K/V entries at any
    # length), StreamingLLM within the same budget, and the same reading without memory
    reading = ["--memory-window", "1", "--recent-tokens", "32", "--sink-tokens", "4", "--streaming-window", "58"]
    window = ["--memory-window", "0", "--recent-tokens", "32", "--sink-tokens", "4"]
    assert evaluate(common + tasks + reading + ["--methods", "uio", "streaming", "--name", "smollm2_release_reading"]) == 0
    assert evaluate(common + tasks + window + ["--methods", "uio", "--name", "smollm2_release_window"]) == 0
    assert evaluate(common + ["--tasks", "facts", "--facts", str(facts), "--methods", "no_memory", "full",
                              "--name", "smollm2_release_baselines"]) == 0
    fluency = ["--tasks", "fluency", "--fluency-prompt", "64", "--fluency-tokens", "8"]
    assert evaluate(common + fluency + reading + ["--methods", "uio", "--name", "smollm2_release_reading_fluency"]) == 0
    assert evaluate(common + fluency + ["--methods", "full", "--name", "smollm2_levers_baselines_fluency"]) == 0
    long = ["--tasks", "perplexity", "--lengths", "96", "128"]
    assert evaluate(common + long + reading + ["--methods", "uio", "no_memory", "streaming",
                                               "--name", "smollm2_release_long"]) == 0
    assert evaluate(common + long + window + ["--methods", "uio", "--name", "smollm2_release_long_window"]) == 0
    long_facts = tmp_path / "long_facts.jsonl"  # two lengths, bucketed as 128 and 256 tokens
    write_fact_jsonl(str(long_facts), 4, AutoTokenizer.from_pretrained(tiny_dirs["llama"]), [120, 240], ["story"],
                     templates="held_out", log=lambda _: None)
    assert evaluate(common + reading + ["--tasks", "facts", "--facts", str(long_facts), "--methods", "uio",
                                        "--name", "smollm2_release_long_facts"]) == 0
    assert evaluate(common + reading + ["--tasks", "facts", "--facts", str(long_facts), "--methods", "streaming",
                                        "no_memory", "--name", "smollm2_release_long_facts_baselines"]) == 0

    mod = _summary_module("memory_summary")
    assert mod.main(["--arm", "sinks", "--results", str(results), "--runs", str(runs)]) == 1  # no sinks arm yet
    assert "make memory-recipe" in capsys.readouterr().err
    assert evaluate(common + tasks + ["--methods", "uio", "--name", "smollm2_levers_sinks"]) == 0
    assert mod.main(["--arm", "sinks", "--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_release.json").read_text())
    read = lambda name: json.loads((results / f"{name}.json").read_text())  # noqa: E731
    later = lambda r, m, n: r["perplexity"][m]["by_length"][n]["later_perplexity"]  # noqa: E731
    assert s["reading"] == {"memory_window": 1, "recent_tokens": 32, "sink_tokens": 4}
    assert s["perplexity"]["uio"]["64"]["perplexity"] == later(read("smollm2_release_reading"), "uio", "64")
    assert s["perplexity"]["window"]["64"]["perplexity"] == later(read("smollm2_release_window"), "uio", "64")
    assert s["perplexity"]["full"]["64"]["perplexity"] == later(read("smollm2_levers_baselines"), "full", "64")
    long_run, long_window = read("smollm2_release_long"), read("smollm2_release_long_window")
    for n in ("96", "128"):
        assert s["perplexity"]["uio"][n]["perplexity"] == later(long_run, "uio", n)
        assert s["perplexity"]["streaming"][n]["perplexity"] == later(long_run, "streaming", n)
        assert s["perplexity"]["window"][n]["perplexity"] == later(long_window, "uio", n)
        # a fixed budget at every length: the memory, and StreamingLLM within it
        assert s["perplexity"]["uio"][n]["kv_entries"] == 4 + 32 + 32 + 4
        assert s["perplexity"]["streaming"][n]["kv_entries"] <= s["perplexity"]["uio"][n]["kv_entries"]
        assert s["perplexity"]["window"][n]["kv_entries"] == 4 + 32 + 32
    assert s["facts"]["uio"]["n"] == 2 and s["facts"]["window"]["n"] == 2
    baselines = read("smollm2_release_baselines")["facts"]
    assert s["facts"]["full"]["accuracy"] == baselines["methods"]["full"]["cells"]["all"]["accuracy"]
    assert s["facts"]["full"]["records_sha1"] == s["facts"]["uio"]["records_sha1"] and s["facts_same_records"]
    cells = read("smollm2_release_long_facts_baselines")["facts"]["methods"]["streaming"]["cells"]
    assert s["facts_by_length"]["streaming"] == {
        c.split(":")[1]: {k: v[k] for k in ("accuracy", "answer_loss", "key_match", "n")} for c, v in cells.items()
        if c.startswith("length:")}
    assert sum(v["n"] for v in s["facts_by_length"]["uio"].values()) == 4 and s["facts_by_length"]["full"] == {}
    assert s["facts_by_length_records"] == read("smollm2_release_long_facts")["facts"]["records_sha1"]
    assert s["fluency"]["full"]["ratio_to_full"] == pytest.approx(1.0) and s["fluency"]["window"] is None
    assert s["fluency"]["uio"]["judge_perplexity"] == \
        read("smollm2_release_reading_fluency")["fluency"]["methods"]["uio"]["judge_perplexity"]
    assert all(g["met"] is None for g in s["goals"] if g["goal"].startswith("perplexity"))  # not at 8K..32K here
    assert "not measured" in capsys.readouterr().out
    # the goals at the release's lengths
    at = lambda v: {"perplexity": v, "kv_entries": 1}  # noqa: E731
    figures = {"perplexity": {"uio": {"8192": at(16.0), "16384": at(12.0)}, "streaming": {"8192": at(13.4), "16384": at(14.0)},
                              "no_memory": {"8192": at(21.0)}, "full": {"8192": at(13.0)}},
               "facts": {"uio": {"accuracy": 0.95}}, "reconstruction": {"rouge_l": 0.93}}
    streaming8k, streaming16k, streaming32k, gap, base, facts, far, outside, autoencode = mod.goals(figures)
    assert base["met"] is None  # not known to be frozen: not measured
    assert mod.goals({**figures, "frozen_decoder": True})[4]["met"] is True
    assert "StreamingLLM" in streaming8k["goal"] and (streaming8k["met"], streaming16k["met"]) == (False, True)
    assert streaming32k["met"] is None
    assert gap["value"] == pytest.approx(5 / 8) and gap["met"] is True
    assert facts["met"] is None and far["met"] is None  # 2K alone cannot say whether 4K..32K reach 90%
    assert outside["met"] is None  # no figures by length
    low = mod.goals({**figures, "facts": {"uio": {"accuracy": 0.25}}})
    assert (low[5]["met"], low[6]["met"]) == (False, False)  # 25% at 2K: every length missed
    # by length: 4K..16K at 90% or more, 32K below 70%; StreamingLLM reads one fact beyond its window
    acc = lambda *v: {n: {"accuracy": a} for n, a in zip(("4K", "8K", "16K", "32K"), v)}  # noqa: E731
    by_length = {"uio": acc(1.0, 0.95, 0.9, 0.6), "streaming": acc(0.0, 0.0, 0.1), "no_memory": acc(0.0)}
    facts, far, outside = mod.goals({**figures, "facts_by_length": by_length})[5:8]
    assert (facts["value"], facts["met"], far["value"], far["met"]) == (0.9, True, 0.6, False)
    assert (outside["value"], outside["met"]) == (0.1, False)
    assert autoencode["met"] is True
    assert mod.main(["--results", str(tmp_path / "none"), "--runs", str(runs)]) == 1
    assert "make memory-recipe" in capsys.readouterr().err


def test_release_parts_ship_the_reading_and_keep_the_old_release_on_error(tiny_dirs, tmp_path, capsys):
    from uio_ds.model.memory_model import UIOMemoryModel

    parts, out = tmp_path / "parts", tmp_path / "release"
    UIOMemoryModel.from_pretrained(tiny_dirs["llama"], small_config(recent_tokens=16, sink_tokens=2)).save_trained(str(parts))
    release = _summary_module("release_parts")
    assert release.main(["--model", tiny_dirs["llama"], "--parts", str(parts), "--out", str(out),
                         "--memory-window", "2", "--recent-tokens", "32", "--sink-tokens", "4"]) == 0
    model = UIOMemoryModel.from_pretrained(tiny_dirs["llama"], trained_path=str(out))
    assert (model.config.memory_window, model.config.recent_tokens, model.config.sink_tokens) == (2, 32, 4)
    assert model.max_tokens_supported() is None  # a fixed reading: any length
    assert release.main(["--model", tiny_dirs["llama"], "--parts", str(parts), "--out", str(tmp_path / "kept"),
                         "--memory-window", "3"]) == 0
    kept = UIOMemoryModel.from_pretrained(tiny_dirs["llama"], trained_path=str(tmp_path / "kept")).config
    assert (kept.recent_tokens, kept.sink_tokens) == (16, 2)  # the parts' own reading unless asked
    before = (out / "uio_config.json").read_text()
    assert release.main(["--model", tiny_dirs["llama"], "--parts", str(parts), "--out", str(out),
                         "--memory-window", "2", "--recent-tokens", "20"]) == 2  # not a multiple of l
    assert "recent_tokens" in capsys.readouterr().err and (out / "uio_config.json").read_text() == before


def test_stage_times_keep_the_stages_run_elsewhere(tmp_path):
    common = _summary_module("summary_common")
    times = tmp_path / "times.tsv"
    times.write_text("arm b (100 steps)\t50\narm a: evaluation\t7\n")
    # a recipe continued on another machine: earlier stages stay, a stage run again takes its new time
    stages, total = common.stage_times(str(times), {"arm a (100 steps)": 100, "arm a: evaluation": 30})
    assert stages == {"arm a (100 steps)": 100, "arm a: evaluation": 7, "arm b (100 steps)": 50} and total == 157
    assert common.stage_times(None, {"x": 3}) == ({"x": 3}, 3)
    assert common.stage_times(str(tmp_path / "none.tsv")) == ({}, None)


def test_fidelity_summary_follows_reconstruction_across_stages(tiny_dirs, tmp_path, capsys):
    evaluate, common, results, runs = _evaluation_setup(tiny_dirs, tmp_path)
    mod = _summary_module("fidelity_summary")
    # committed milestones come first; here every stage reads the runs under --runs
    mod.STAGES = {name: (str(tmp_path / "no_milestone" / name), *rest) for name, (_, *rest) in mod.STAGES.items()}
    mod.READERS = {name: (str(tmp_path / "no_milestone" / name), *rest) for name, (_, *rest) in mod.READERS.items()}
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 1
    assert "make fidelity-recipe" in capsys.readouterr().err
    assert evaluate(common + ["--tasks", "autoencode", "--ae-segments", "3",
                              "--name", "smollm2_levers_ae_warm_autoencode"]) == 0
    _write_metrics(runs / "ae_warm", [4.0, 3.5, 3.0], seconds=1.0, tokens=64)
    _write_metrics(runs / "ae_long", [3.0, 2.5, 2.0, 1.5, 1.0], seconds=2.0, tokens=64)
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_fidelity.json").read_text())
    warm, long = s["stages"]["ae_warm"], s["stages"]["ae_long"]
    ae = json.loads((results / "smollm2_levers_ae_warm_autoencode.json").read_text())["autoencode"]
    assert warm["reconstruction"]["rouge_l"] == ae["rouge_l"] and warm["reconstruction"]["no_memory"] == ae["no_memory"]
    assert (warm["steps_before"], long["steps_before"]) == (0, 3)  # the second stage continues the first
    assert long["reconstruction"] is None and long["training"]["steps"] == 5
    assert s["goal"]["value"] == ae["rouge_l"] and s["goal"]["met"] is False  # untrained parts: far below 0.9
    assert "not evaluated" in capsys.readouterr().out
    assert evaluate(common + ["--tasks", "autoencode", "--ae-segments", "3", "--name", "smollm2_fidelity_ae_long"]) == 0
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_fidelity.json").read_text())
    assert s["stages"]["ae_long"]["reconstruction"]["segments"] == 3 and (results / "smollm2_fidelity.png").exists()
    # a stage counts its steps within its own lineage (ae_wide continues ae_long, as ae_cycle2 would
    # have); the goal takes the best stage
    _write_metrics(runs / "ae_wide", [2.0, 1.5], seconds=2.0, tokens=64)
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_fidelity.json").read_text())
    assert (s["stages"]["ae_wide"]["steps_before"], s["stages"]["ae_wide"]["from"]) == (3 + 5, "ae_long")
    assert "ae_cycle2" not in s["stages"] and s["stages"]["ae_warm"]["from"] is None
    assert s["goal"]["value"] == max(st["reconstruction"]["rouge_l"] for st in s["stages"].values() if st["reconstruction"])
    # a stage at another compression ratio is shown, but the goal is set at ratio 8
    other = json.loads((results / "smollm2_fidelity_ae_long.json").read_text())
    other["config"]["compression_ratio"], other["autoencode"]["rouge_l"] = 4, 0.99
    (results / "smollm2_fidelity_ae_ratio4.json").write_text(json.dumps(other))
    best = s["goal"]["value"]
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_fidelity.json").read_text())
    assert s["stages"]["ae_ratio4"]["reconstruction"]["ratio"] == 4 and s["goal"]["value"] == best < 0.99
    assert s["readers"] == {}
    # the reader of facts, with memory and the same reading without
    from transformers import AutoTokenizer

    from uio_ds.data.generators.facts import write_fact_jsonl

    facts = tmp_path / "facts.jsonl"
    write_fact_jsonl(str(facts), 3, AutoTokenizer.from_pretrained(tiny_dirs["llama"]), [240], ["story"],
                     templates="held_out", log=lambda _: None)
    tasks = ["--tasks", "perplexity", "facts", "--facts", str(facts), "--lengths", "64", "--methods", "uio",
             "--recent-tokens", "32", "--sink-tokens", "4"]
    assert evaluate(common + tasks + ["--memory-window", "1", "--name", "smollm2_fidelity_reader"]) == 0
    assert evaluate(common + tasks + ["--memory-window", "0", "--name", "smollm2_fidelity_reader_window"]) == 0
    import matplotlib.pyplot as plt

    assert (results / "smollm2_fidelity_reader_perplexity.png").exists() and not plt.get_fignums()  # none left open
    _write_metrics(runs / "reader", [0.5, 8.0, 0.25, 0.125], seconds=3.0, tokens=2048)
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_fidelity.json").read_text())
    trained = s["readers"]["reader"]["training"]
    assert trained["steps"] == 4 and trained["loss_last"] == 0.125 and trained["metrics"] == str(runs / "reader")
    assert "reader_ratio4" not in s["readers"]  # neither trained nor evaluated
    reader = json.loads((results / "smollm2_fidelity_reader.json").read_text())
    cells = reader["facts"]["methods"]["uio"]["cells"]
    got = s["readers"]["reader"]
    assert got["memory"]["facts"]["n"] == 3 and got["window"]["facts"]["n"] == 3
    assert (got["memory"]["memory_window"], got["window"]["memory_window"]) == (1, 0)
    assert got["memory"]["facts_by_depth"] == {
        c.split(":")[1]: v["accuracy"] for c, v in cells.items() if c.startswith("depth:")}
    assert got["memory"]["perplexity"]["64"] == \
        reader["perplexity"]["uio"]["by_length"]["64"]["later_perplexity"]
    assert "reader: 4 steps from ae_long" in capsys.readouterr().out
    # facts from memory alone: a test is shown once a reader trained for it is there, beside the
    # baselines of its records
    alone = ["--tasks", "facts", "--facts", str(facts), "--recent-tokens", "0", "--sink-tokens", "0"]
    assert evaluate(common + alone + ["--methods", "uio", "no_memory", "full",
                                      "--name", "smollm2_fidelity_near_ae_ratio4"]) == 0
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    assert json.loads((results / "smollm2_fidelity.json").read_text())["fact_tests"] == {}  # no reader yet
    assert evaluate(common + alone + ["--methods", "uio", "--name", "smollm2_fidelity_near_reader"]) == 0
    _write_metrics(runs / "reader_near", [4.0, 2.0], seconds=3.0, tokens=16)
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    s = json.loads((results / "smollm2_fidelity.json").read_text())
    near = s["fact_tests"]["near"]["rows"]
    assert list(near) == ["no memory", "ae_ratio4", "reader_near", "full attention"] and "far" not in s["fact_tests"]
    base = json.loads((results / "smollm2_fidelity_near_ae_ratio4.json").read_text())["facts"]["methods"]
    assert near["full attention"]["accuracy"] == base["full"]["cells"]["all"]["accuracy"] and near["reader_near"]["n"] == 3
    assert near["full attention"]["key_match"] == base["full"]["cells"]["all"]["key_match"]
    backs = {c.split(":")[1]: v["n"] for c, v in base["full"]["cells"].items() if c.startswith("back:")}
    assert backs and {n: v["n"] for n, v in near["full attention"]["by_segments_back"].items()} == backs
    assert list(near["full attention"]["by_segments_back"]) == sorted(backs, key=int)
    # a report from before the key match was scored: it is read from the answers listed
    for method in base.values():
        for cell in method["cells"].values():
            del cell["key_match"]
        for said in method["said"]:
            said["key"], said["said"] = "1234", "it is 1294"  # 3 of 4
    old = json.loads((results / "smollm2_fidelity_near_ae_ratio4.json").read_text())
    (results / "smollm2_fidelity_near_ae_ratio4.json").write_text(json.dumps({**old, "facts": {**old["facts"],
                                                                               "methods": base}}))
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    near = json.loads((results / "smollm2_fidelity.json").read_text())["fact_tests"]["near"]["rows"]
    assert near["full attention"]["key_match"] == near["no memory"]["key_match"] == 0.75
    assert s["readers"]["reader_near"]["training"]["steps"] == 2 and s["readers"]["reader_near"]["from"] == "ae_ratio4"
    out = capsys.readouterr().out
    assert "reader_near: 2 steps from ae_ratio4" in out and "fact records alone, read from memory alone" in out
    assert "facts read from memory alone (no raw window, no sinks): short held-out records" in out
    # the long records: only the lengths read from memory alone (4K, 8K) are compared, not the
    # baselines' 16K and 32K
    report = json.loads((results / "smollm2_fidelity_near_reader.json").read_text())
    cells = report["facts"]["methods"]["uio"]["cells"]
    for cell in [c for c in cells if c.startswith("length:")]:
        del cells[cell]
    cells["length:4K"], cells["length:16K"] = dict(cells["all"], n=2), dict(cells["all"], n=1)
    (results / "smollm2_fidelity_long_reader_span.json").write_text(json.dumps(report))
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    long = json.loads((results / "smollm2_fidelity.json").read_text())["fact_tests"]["long"]["rows"]
    assert list(long) == ["reader_span"] and list(long["reader_span"]["by_length"]) == ["4K"]
    assert "4K: " in capsys.readouterr().out
    assert long["reader_span"]["by_length"]["4K"]["key_match"] == cells["all"]["key_match"]
    # a row's figures are those of the test's lengths alone: 2 of the report's 3 records here
    assert long["reader_span"]["n"] == 2 and long["reader_span"]["accuracy"] == cells["all"]["accuracy"]
    # 16K from memory alone: only the 16K record; the goal's reading (sinks and raw tokens too): 4K and 16K
    (results / "smollm2_fidelity_16k_reader_depth.json").write_text(json.dumps(report))
    cells["length:8K"] = dict(cells["all"], n=1, accuracy=1.0, key_match=1.0, answer_loss=0.0)
    (results / "smollm2_fidelity_long_window_reader_depth.json").write_text(json.dumps(report))
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    tests = json.loads((results / "smollm2_fidelity.json").read_text())["fact_tests"]
    assert tests["16K"]["rows"]["reader_depth"]["n"] == 1 and list(tests["16K"]["rows"]["reader_depth"]["by_length"]) == ["16K"]
    goal = tests["goal"]["rows"]["reader_depth"]
    assert goal["n"] == 4 and sorted(goal["by_length"]) == ["16K", "4K", "8K"]
    assert goal["accuracy"] == pytest.approx((3 * cells["all"]["accuracy"] + 1.0) / 4)
    assert "4 sinks, 768 raw tokens and every memory" in tests["goal"]["reading"]
    assert "facts read from 4 sinks, 768 raw tokens and every memory" in capsys.readouterr().out
    # one report at every length (4K-32K from memory alone): each length in its own test, its
    # breakdowns by depth and distance from the answers of that length alone
    cells["length:32K"] = dict(cells["all"], n=1, accuracy=0.0)
    said = report["facts"]["methods"]["uio"]["said"]
    assert {"answer_loss", "depth", "back"} <= set(said[0])
    said[0].update(tokens=32750, back=120, right=False, key_match=0.25, answer_loss=3.5, depth=0.5)
    (results / "smollm2_fidelity_long_reader_long.json").write_text(json.dumps(report))
    assert mod.main(["--results", str(results), "--runs", str(runs)]) == 0
    tests = json.loads((results / "smollm2_fidelity.json").read_text())["fact_tests"]
    assert {t: list(tests[t]["rows"]["reader_long"]["by_length"]) for t in ("long", "16K", "32K")} == \
        {"long": ["4K", "8K"], "16K": ["16K"], "32K": ["32K"]}
    assert tests["32K"]["rows"]["reader_long"]["accuracy"] == 0.0 and tests["long"]["rows"]["reader_long"]["n"] == 3
    assert tests["32K"]["rows"]["reader_long"]["by_segments_back"] == \
        {"120": {"accuracy": 0.0, "answer_loss": 3.5, "key_match": 0.25, "n": 1}}
    assert tests["32K"]["rows"]["reader_long"]["by_depth"] == {"1/3-2/3": 0.0}
    assert "120" not in tests["long"]["rows"]["reader_long"]["by_segments_back"]
