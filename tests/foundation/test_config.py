import json

import pytest

from uio_ds.config import CONFIG_NAME, ConfigError, LoRAConfig, UIOConfig


def test_defaults_follow_the_paper():
    cfg = UIOConfig()
    assert cfg.segment_length == 1024 and cfg.compression_ratio == 32 and cfg.num_mem_tokens == 32
    assert cfg.encoder_lora.target_modules == ("q_proj", "v_proj")
    assert cfg.transfer_lora.target_modules == ("k_proj", "v_proj")
    assert (cfg.encoder_lora.rank, cfg.encoder_lora.alpha) == (128, 512.0)
    assert UIOConfig(compression_ratio=8).num_mem_tokens == 128


def test_ratio_must_divide_segment_length():
    with pytest.raises(ConfigError) as err:
        UIOConfig(segment_length=1000, compression_ratio=32)
    msg = str(err.value)
    assert "compression_ratio=32 does not divide segment_length=1000" in msg
    assert "[2, 4, 8]" in msg  # the fix: ratios that do divide 1000


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        UIOConfig(
            segment_length=100,
            compression_ratio=3,
            attention="flash",
            dtype="fp8",
            position_overflow="wrap",
            transfer_lora=LoRAConfig(rank=0, target_modules=("q_proj",)),
            train_transfer="no",
        )
    problems = err.value.problems
    joined = "\n".join(problems)
    for option in ("compression_ratio", "attention='flash'", "dtype='fp8'", "position_overflow='wrap'",
                   "transfer_lora.rank", "transfer_lora.target_modules", "train_transfer='no'"):
        assert option in joined, option
    assert len(problems) == 7


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(segment_length=1), "segment_length=1"),
        (dict(segment_length=16, compression_ratio=32), "compression_ratio=32 does not divide"),
        (dict(encoder_lora=LoRAConfig(dropout=1.0)), "encoder_lora.dropout"),
        (dict(encoder_lora=LoRAConfig(alpha=-1)), "encoder_lora.alpha"),
        (dict(encoder_lora=LoRAConfig(target_modules=("q_proj", "q_proj"))), "duplicates"),
        (dict(mem_init="zeros"), "mem_init"),
    ],
)
def test_single_bad_option_is_named(kwargs, needle):
    with pytest.raises(ValueError, match=None) as err:
        UIOConfig(**kwargs)
    assert needle in str(err.value)


def test_save_load_round_trip(tmp_path):
    cfg = UIOConfig(segment_length=64, compression_ratio=8, transfer_lora=LoRAConfig(rank=4, target_modules=("k_proj",)))
    cfg.save(str(tmp_path), extra={"model_type": "llama"})
    loaded, meta = UIOConfig.load(str(tmp_path))
    assert loaded == cfg and meta == {"model_type": "llama"}


def test_unknown_option_in_saved_file(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"uio": {"segment_length": 64, "ratio": 8}}))
    with pytest.raises(ConfigError, match="unknown option"):
        UIOConfig.load(str(tmp_path))


def test_missing_saved_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved UIO model"):
        UIOConfig.load(str(tmp_path))


def test_decoder_lora_is_optional_and_validated():
    assert UIOConfig().decoder_lora is None and UIOConfig().to_dict()["decoder_lora"] is None
    config = UIOConfig(decoder_lora={"rank": 4, "alpha": 8, "target_modules": ["q_proj", "o_proj"]})
    assert config.decoder_lora.target_modules == ("q_proj", "o_proj")
    assert UIOConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="decoder_lora='yes'"):
        UIOConfig(decoder_lora="yes")
    with pytest.raises(ConfigError, match="decoder_lora.rank"):
        UIOConfig(decoder_lora={"rank": 0})


def test_memory_window_must_be_a_whole_number():
    assert UIOConfig(memory_window=4).memory_window == 4 and UIOConfig().memory_window is None
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="memory_window"):
            UIOConfig(memory_window=bad)
    # 0: no memory, the raw window and sinks alone (the sliding-window baseline); alone it is no_memory
    assert UIOConfig(segment_length=16, compression_ratio=4, memory_window=0, recent_tokens=16).memory_window == 0
    assert UIOConfig(memory_window=0, sink_tokens=4).sink_tokens == 4
    with pytest.raises(ConfigError, match="memory_window=0 reads no memory .* evaluate the 'no_memory' method"):
        UIOConfig(memory_window=0)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="sink_tokens"):
            UIOConfig(sink_tokens=bad)
