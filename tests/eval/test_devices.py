"""Every entry point runs where its model is: weights loaded straight onto the device, inputs
moved there, and no tensor made anywhere else.

A CPU-only machine has one real device, so two stand-ins take the accelerator's place:

* a model on the ``meta`` device under fake tensors (``FakeTensorMode``), which checks every
  operation's devices as CUDA does: an id tensor left on the host, or a tensor made without
  ``device=``, meets the model's tensors and raises ``FakeTensorDeviceMismatchError``;
* a real model on the CPU with ``torch.device("meta")`` as the default device, so a tensor made
  without ``device=`` lands on ``meta`` and fails the first operation that mixes it with the
  model's tensors, while the run's real numbers are compared with a run without it.
"""

import pytest
import torch
from helpers import perturb_trainable, random_ids, small_config
from torch._subclasses.fake_tensor import FakeTensorMode

from uio_ds.eval.autoencode import evaluate_autoencoding, reconstruct, teacher_forced
from uio_ds.eval.methods import build_methods
from uio_ds.eval.passkey import evaluate_passkey
from uio_ds.eval.perplexity import evaluate_perplexity
from uio_ds.model import UIOMemoryModel, generate, resolve_device
from uio_ds.plan.memory import ScalarStandIns

ARCHS = ("llama", "mistral", "qwen2")


def _decoder_lora():
    from uio_ds.config import LoRAConfig

    return LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"))


@pytest.mark.parametrize("arch", ARCHS)
def test_loading_onto_a_device_puts_every_part_there(tiny_dirs, arch):
    model = UIOMemoryModel.from_pretrained(tiny_dirs[arch], small_config(decoder_lora=_decoder_lora()), device="meta")
    placed = {name: t.device.type for name, t in [*model.named_parameters(), *model.named_buffers()]}
    assert set(placed.values()) == {"meta"}, [n for n, d in placed.items() if d != "meta"][:5]
    assert model.device == torch.device("meta")
    # the same parts as a load on the host and a move (the <mem> draw does not depend on the device)
    on_cpu = UIOMemoryModel.from_pretrained(tiny_dirs[arch], small_config(decoder_lora=_decoder_lora()), device="cpu")
    plain = UIOMemoryModel.from_pretrained(tiny_dirs[arch], small_config(decoder_lora=_decoder_lora()))
    assert on_cpu.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(on_cpu.state_dict().values(), plain.state_dict().values()))


def test_device_names_are_checked_before_loading():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device.*--device cpu"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu7")


@pytest.fixture(scope="module", params=["appended", "stepwise"])
def fake_model(tiny_dirs, request):
    """The tiny Llama with a decoder LoRA on the meta device, as fake tensors, in both encoder layouts."""
    config = small_config(decoder_lora=_decoder_lora(), memory_layout=request.param)
    model = UIOMemoryModel.from_pretrained(tiny_dirs["llama"], config, device="meta").eval()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model.to_empty(device="meta")
    return model, mode


def _on_fake_device(fake_model, run):
    model, mode = fake_model
    with mode, ScalarStandIns():  # fake tensors hold no data: .item() reads 1
        return run(model)


# HOMER is left out here: its pruning picks tokens by value (nonzero), which fake tensors cannot
# run; the default-device test below covers it.
@pytest.mark.parametrize("method", ["uio", "no_memory", "streaming", "full"])
def test_methods_take_host_ids_and_run_on_the_model_device(fake_model, method):
    ids = random_ids(1, 40, seed=1)  # made on the host, as a tokenizer makes them
    losses = _on_fake_device(fake_model, lambda m: build_methods(m, [method])[0].token_losses(ids))
    assert len(losses) in (39, 40)  # fake targets hold no data: the ignored last position may count too
    answer = _on_fake_device(fake_model, lambda m: build_methods(m, [method])[0].greedy(ids, 3))
    assert 1 <= len(answer) <= 3  # transformers' generate reads its stop check as True on fake data


def test_generation_and_auto_encoding_run_on_the_model_device(fake_model):
    ids, segments = random_ids(2, 40, seed=1), random_ids(3, 16, seed=2)
    # (stop tokens are left out: on fake data every token reads as one; the test below stops on real data)
    out = _on_fake_device(fake_model, lambda m: generate(m, ids, 3, do_sample=True, top_k=5, top_p=0.9, seed=1))
    assert tuple(out.sequences.shape) == (2, 43)
    rebuilt = _on_fake_device(fake_model, lambda m: reconstruct(m, segments))
    assert tuple(rebuilt.shape) == (3, 15)
    _on_fake_device(fake_model, lambda m: teacher_forced(m, segments))


def test_the_check_catches_ids_left_on_the_host(fake_model):
    """The stand-in fails where a GPU would: the decoder fed ids that were not moved."""
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

    ids = random_ids(1, 12, seed=1)
    with pytest.raises(FakeTensorDeviceMismatchError):
        _on_fake_device(fake_model, lambda m: m.decode(ids, None))
    with pytest.raises(FakeTensorDeviceMismatchError):  # a tensor made without device= meets the model's
        _on_fake_device(fake_model, lambda m: m.mem_embeddings + torch.zeros(m.mem_embeddings.shape[-1]))


def test_every_evaluation_task_makes_its_tensors_on_the_model_device(tiny_dirs):
    from transformers import AutoTokenizer

    model = UIOMemoryModel.from_pretrained(tiny_dirs["llama"], small_config()).eval()
    perturb_trainable(model, scale=0.2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    doc, haystack, segments = random_ids(1, 70, seed=1)[0], random_ids(1, 400, seed=3)[0], random_ids(4, 16, seed=4)

    def run():
        methods = build_methods(model, ["uio", "no_memory", "streaming", "full", "homer"])
        return {"perplexity": evaluate_perplexity(methods, [doc], lengths=[32, 64], segment_length=16),
                "passkey": evaluate_passkey([m for m in methods if m.name in ("uio", "no_memory", "full")], tokenizer,
                                            haystack, [160], [0.5], trials=1),
                "streaming": methods[2].greedy(doc[:40].unsqueeze(0), 3),
                "homer": methods[4].greedy(doc[:40].unsqueeze(0), 3),
                "autoencode": evaluate_autoencoding(model, tokenizer, segments),
                "generate": generate(model, doc.unsqueeze(0), 5, do_sample=True, seed=1, stop_token_ids=[2]).sequences}

    expected = run()
    with torch.device("meta"):  # a tensor made without device= now lands on meta and fails
        got = run()
    assert got.keys() == expected.keys()
    assert torch.equal(got.pop("generate"), expected.pop("generate"))
    assert got == expected
