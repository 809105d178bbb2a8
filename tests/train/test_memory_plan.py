"""The memory planner: fake-tensor predictions of a training step's peak match real CPU
measurements of the same step; the ZeRO accounting matches DeepSpeed's partitioning."""

from __future__ import annotations

import pytest
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from uio_ds.plan.memory import PlanSettings, build_model, measure, persistent_bytes, plan


def _settings(**over) -> PlanSettings:
    values = dict(segment_length=32, compression_ratio=4, algorithm="unbiased", window=2, document_tokens=224,
                  dtype="float32", zero_stage=2, ranks=2, activation_offload=False, lora_rank=4)
    values.update(over)
    return PlanSettings(**values)


@pytest.mark.parametrize("over", [
    {},                                                  # unbiased(2), graphs kept
    {"recompute": True},                                 # unbiased(2), graphs rebuilt at backward
    {"recompute": True, "activation_offload": True},     # ... and the decoder's activations on the host
    {"algorithm": "tbptt"},
    {"algorithm": "full", "window": None},
    {"dtype": "bfloat16", "micro_batch": 2},
    {"distill": 1.0},                                    # the teacher's passes and cache as well
], ids=["unbiased-keep", "unbiased-recompute", "unbiased-recompute-offload", "tbptt", "full", "bf16-batch2",
        "distill"])
def test_predicted_peak_matches_measured_within_10_percent(tiny_dirs, over):
    for arch in ("llama", "qwen2"):
        s = _settings(**over)
        predicted, measured = plan(tiny_dirs[arch], s), measure(tiny_dirs[arch], s)
        assert measured.step_peak > 0
        assert abs(predicted.step_peak / measured.step_peak - 1) <= 0.10, (arch, predicted.step, measured.step)
        # the persistent part is the same formula over the same parameter counts
        assert predicted.persistent == measured.persistent
        assert predicted.frozen_parameters == measured.frozen_parameters > 0


def test_breakdown_names_the_parts_and_sums_to_the_peak(tiny_dirs):
    p = plan(tiny_dirs["llama"], _settings(algorithm="full", window=None))
    assert sum(p.step.values()) == p.step_peak
    # full BPTT at its peak holds every encoder graph and a decoder graph
    assert p.step["encoder graphs"] > 0 and p.step["decoder activations"] > 0


def test_distillation_holds_the_teachers_cache(tiny_dirs):
    lm = plan(tiny_dirs["llama"], _settings(document_tokens=320))
    distilled = plan(tiny_dirs["llama"], _settings(document_tokens=320, distill=1.0))
    assert distilled.step.get("teacher", 0) > 0 and "teacher" not in lm.step
    assert distilled.step_peak > lm.step_peak


def test_activation_offload_keeps_saved_tensors_off_the_device(tiny_dirs):
    kept = plan(tiny_dirs["llama"], _settings(document_tokens=320))
    offloaded = plan(tiny_dirs["llama"], _settings(document_tokens=320, activation_offload=True))
    assert offloaded.settings["graph_mode"] == "offload"
    assert offloaded.step_peak < 0.7 * kept.step_peak, (offloaded.step, kept.step)
    rebuilt = plan(tiny_dirs["llama"], _settings(document_tokens=320, recompute=True, activation_offload=True))
    assert rebuilt.settings["graph_mode"] == "recompute_offload"
    # graphs rebuilt, decoder activations on the host: the batched encoder call is the peak
    assert "decoder activations" not in rebuilt.step and rebuilt.step_peak <= kept.step_peak


def test_named_shape_builds_on_fake_tensors():
    s = PlanSettings(document_tokens=2048, segment_length=1024)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = build_model("llama2-7b", s, fake_mode=mode)
    assert all(isinstance(p, FakeTensor) for p in model.parameters())
    # Llama-2-7b: 6,738,415,616 parameters (its published count); the UIO parts are trainable
    trainable = sum(p.numel() for p in model.trainable_parameters())
    frozen = sum(p.numel() for p in model.parameters()) - trainable
    assert frozen == 6_738_415_616
    assert model.config.dtype == "bfloat16" and model.num_kv_heads == 32


def test_zero_partitioning_matches_deepspeed_accounting():
    psi, frozen = 1_000_000, 10_000_000
    s = PlanSettings(dtype="bfloat16", zero_stage=2, ranks=8, reduce_bucket_size=1000)
    parts, _ = persistent_bytes(psi, frozen, s)
    assert parts == {"frozen weights": 2 * frozen, "trainable weights": 2 * psi, "fp32 master weights": 4 * psi // 8,
                     "Adam moments (fp32)": 8 * psi // 8, "gradients (ZeRO)": 4 * psi // 8, "reduce bucket": 2 * 1000}
    s1 = PlanSettings(dtype="bfloat16", zero_stage=1, ranks=8, reduce_bucket_size=1000, overlap_comm=True)
    parts1, _ = persistent_bytes(psi, frozen, s1)
    assert parts1["gradients (ZeRO)"] == 4 * psi and parts1["reduce bucket"] == 4 * 1000 * 2
    off, notes = persistent_bytes(psi, frozen, PlanSettings(zero_stage=2, ranks=8, optimizer_offload=True))
    assert off["Adam moments (fp32)"] == off["fp32 master weights"] == off["gradients (ZeRO)"] == 0
    assert any("host memory" in n for n in notes)


def test_zero3_partitions_the_frozen_weights_and_gathers_one_module():
    psi, frozen, whole, gathered = 1_000_000, 10_000_000, 2_000, 500_000
    s = PlanSettings(dtype="bfloat16", zero_stage=3, ranks=8, reduce_bucket_size=1000)
    parts, notes = persistent_bytes(psi, frozen, s, zero3=(whole, gathered))
    assert parts == {"frozen weights": 2 * whole + 2 * (frozen - whole) / 8, "gathered weights (ZeRO-3)": 2 * gathered,
                     "trainable weights": 2 * psi, "fp32 master weights": 4 * psi // 8,
                     "Adam moments (fp32)": 8 * psi // 8, "gradients (ZeRO)": 4 * psi // 8, "reduce bucket": 2 * 1000}
    assert any("partitioned over the ranks" in n for n in notes)
    offload = PlanSettings(dtype="bfloat16", zero_stage=3, ranks=8, param_offload=True)
    assert persistent_bytes(psi, frozen, offload, zero3=(whole, gathered))[0]["frozen weights"] == 2 * whole


def test_bad_settings_are_named():
    with pytest.raises(ValueError) as err:
        plan("llama2-7b", PlanSettings(algorithm="magic", dtype="int8", ranks=0))
    text = str(err.value)
    assert "algorithm='magic'" in text and "dtype='int8'" in text and "ranks=0" in text
    with pytest.raises(FileNotFoundError, match="named shape"):
        plan("no/such/dir", PlanSettings())



def test_offload_moves_activations_but_not_weights_or_broadcast_views():
    import torch

    from uio_ds.utils.offload import pack_saved, unpack_saved

    with FakeTensorMode(allow_non_fake_inputs=True):
        w = torch.nn.Parameter(torch.randn(64, 64), requires_grad=False)
        x = torch.randn(8, 16, 64).exp()
        packed = [pack_saved(t, host=torch.device("meta")) for t in (w, w.t(), w.expand(8, 64, 64), x)]
        # the weight, its transpose and its broadcast stay; an activation goes to the host (meta here)
        assert [p[1].device.type for p in packed] == ["cpu", "cpu", "cpu", "meta"]
        back = unpack_saved(packed[-1])
        assert back.device.type == "cpu" and back.shape == x.shape


def _train_config(tmp_path, model_dir, **uio) -> str:
    config = {"model_path": model_dir,
              "uio": {"segment_length": 32, "compression_ratio": 4,
                      "encoder_lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                      "transfer_lora": {"rank": 4, "alpha": 8, "target_modules": ["k_proj", "v_proj"]}, **uio},
              "data": {"sources": [{"path": "unused.jsonl"}], "max_tokens": 224},
              "algorithm": {"name": "unbiased", "window": 2}}
    path = tmp_path / f"config{len(uio)}.json"
    path.write_text(__import__("json").dumps(config))
    return str(path)


def test_plan_command_plans_the_config_it_is_given(tiny_dirs, tmp_path, capsys):
    """uio-ds plan: the config's own memory model and strategy, the DeepSpeed config's stage and
    offload; a decoder LoRA in the config shows up as trainable parameters; bad input is refused."""
    import json

    from uio_ds.plan import main

    plain, with_decoder = _train_config(tmp_path, tiny_dirs["llama"]), _train_config(
        tmp_path, tiny_dirs["llama"], decoder_lora={"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert main(["--config", plain, "--ranks", "2", "--out", str(tmp_path / "a.json")]) == 0
    assert main(["--config", with_decoder, "--ranks", "2", "--deepspeed", "zero2_offload",
                 "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert [r["tokens"] for r in a["rows"]] == [224]  # data.max_tokens
    plan_a, plan_b = a["plans"][0], b["plans"][0]
    assert plan_b["trainable_parameters"] > plan_a["trainable_parameters"]
    assert plan_a["settings"]["graph_mode"] == "keep" and plan_b["settings"]["graph_mode"] == "offload"
    assert plan_a["peak"] == sum(plan_a["persistent"].values()) + plan_a["step_peak"]
    assert "fits 24 GB" in capsys.readouterr().out
    assert main(["--config", plain, "--set", "data.max_tokens=null"]) == 2
    assert "give the document lengths with --tokens" in capsys.readouterr().err
