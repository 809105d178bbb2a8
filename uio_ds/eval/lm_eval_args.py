"""The model_args of ``--model uio_ds`` (lm-evaluation-harness), checked before anything is
loaded: ``parse_model_args`` reads and checks them, ``uio_config`` makes the memory model's config,
``check_files`` reads what the base directory and the parts say without reading weights. Apart
from ``lm_eval_model`` so that the checks need neither lm-eval nor the model."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.config.base import ConfigError
from uio_ds.config.model import CONFIG_NAME, DTYPES
from uio_ds.utils.devices import resolve_device

MODEL_NAME = "uio_ds"
# segment_length without trained parts when none is given: UIOConfig's default
DEFAULT_SEGMENT_LENGTH = UIOConfig().segment_length


class ModelArgsError(ValueError):
    """A bad ``--model_args`` value, found before any weights are read; the message names the fix."""


@dataclass
class Options:
    """The model_args of ``--model uio_ds``, checked (``parse_model_args``)."""

    base: str
    """The base model directory (config.json, weights, tokenizer)."""
    uio: str | None = None
    """Trained UIO parts (save_trained output, a run's final/); unset: no memory (no_memory)."""
    segment_length: int | None = None
    """Without ``uio``: the segment the decoder reads alone (default UIOConfig's, 1024)."""
    memory_window: int | None = None
    """With ``uio``: read only the most recent N memories (UIOConfig.memory_window)."""
    recent_tokens: int | None = None
    """With ``uio``: the raw recent window in tokens, a multiple of l (UIOConfig.recent_tokens)."""
    sink_tokens: int | None = None
    """With ``uio``: the text's first N tokens read raw ahead of the memories (UIOConfig.sink_tokens)."""
    encode_batch_size: int | str | None = "auto"
    """Segments per encoder call while reading a prompt: 'auto' (from the memory budget), N, or
    None ('all': every segment at once)."""
    dtype: str | None = None
    """float32, bfloat16 or float16 (default: the parts' own, float32 without parts)."""
    device: str = "auto"
    """auto (CUDA when there is one), cpu, cuda, cuda:N."""
    chat_template: str | None = None
    """A Jinja file that replaces the tokenizer's chat template (for --apply_chat_template)."""
    batch_size: int = 1
    """Rows read in one decoder pass (continuations of one context; equal-length prompts)."""

    @property
    def use_memory(self) -> bool:
        return self.uio is not None


_KNOWN = tuple(f.name for f in dataclasses.fields(Options))


def parse_model_args(args: dict) -> Options:
    """Check every model_arg before anything is loaded; a ``ModelArgsError`` names the fix."""
    args = dict(args)
    # Passed by the harness whatever the model: only the batch_size=auto search uses it.
    if args.pop("max_batch_size", None) is not None:
        raise ModelArgsError("max_batch_size applies to batch_size=auto, which uio_ds does not do: "
                             "drop --max_batch_size and give --batch_size N")
    unknown = sorted(set(args) - set(_KNOWN))
    if unknown:
        raise ModelArgsError(f"unknown model_args {unknown} for --model {MODEL_NAME}: known are {list(_KNOWN)}")
    if not args.get("base"):
        raise ModelArgsError(f"--model {MODEL_NAME} needs base=DIR, the base model directory "
                             "(e.g. --model_args base=models/smollm2,uio=release/smollm2-uio)")
    # lm-eval reads "123" as a number and "None" as None: paths and names are text again
    text = ("base", "uio", "device", "dtype", "chat_template")
    opts = Options(**{k: str(v) if k in text else v for k, v in args.items() if v is not None})
    if not os.path.isdir(opts.base):
        raise ModelArgsError(f"base={opts.base!r} is not a directory: give a local model directory "
                             "(config.json, weights, tokenizer; nothing is downloaded)")
    if opts.uio is not None:
        if not os.path.isfile(os.path.join(opts.uio, CONFIG_NAME)):
            raise ModelArgsError(f"uio={opts.uio!r} holds no {CONFIG_NAME}: give the directory save_trained "
                                 "wrote (a run's final/), or leave uio out to evaluate the base model without memory")
        if opts.segment_length is not None:
            raise ModelArgsError("segment_length comes from the trained parts (uio=...): drop it")
    else:
        for name in ("memory_window", "recent_tokens", "sink_tokens"):
            if getattr(opts, name) is not None:
                raise ModelArgsError(f"{name} shapes the memory, and without trained parts there is none: "
                                     f"give uio=DIR or drop {name}")
    for name in ("segment_length", "memory_window", "recent_tokens", "sink_tokens", "batch_size"):
        value = getattr(opts, name)
        if isinstance(value, str) and value.strip().isdigit():  # lm-eval's --batch_size comes as text
            value = int(value)
            setattr(opts, name, value)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            hint = " (batch_size=auto is not supported: give a number)" if name == "batch_size" else ""
            raise ModelArgsError(f"{name}={value!r}: must be an integer{hint}")
    if opts.batch_size < 1:
        raise ModelArgsError(f"batch_size={opts.batch_size}: must be >= 1")
    if opts.encode_batch_size == "all":
        opts.encode_batch_size = None
    ebs = opts.encode_batch_size
    if ebs is not None and ebs != "auto" and (not isinstance(ebs, int) or isinstance(ebs, bool) or ebs < 1):
        raise ModelArgsError(f"encode_batch_size={ebs!r}: give auto, all or an integer >= 1")
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise ModelArgsError(f"dtype={opts.dtype!r}: choose one of {list(DTYPES)}")
    if opts.chat_template is not None and not os.path.isfile(opts.chat_template):
        raise ModelArgsError(f"chat_template={opts.chat_template!r} is not a file: give a Jinja template file")
    try:
        resolve_device(str(opts.device))
    except ValueError as err:
        raise ModelArgsError(f"{err}; or pass device=auto in --model_args (lm-eval's --device defaults to cuda:0 "
                             "on every machine)") from None
    return opts


def uio_config(opts: Options) -> UIOConfig:
    """The memory model's config: the trained parts' own, with the runtime options given; without
    parts, a segmented decoder whose (never run) memory parts are as small as they can be."""
    try:
        if opts.use_memory:
            config, _ = UIOConfig.load(opts.uio)
            overrides = {k: getattr(opts, k) for k in ("dtype", "memory_window", "recent_tokens", "sink_tokens")
                         if getattr(opts, k) is not None}
            return dataclasses.replace(config, **overrides)
        l = opts.segment_length or DEFAULT_SEGMENT_LENGTH
        smallest = LoRAConfig(rank=1, alpha=1.0)
        return UIOConfig(segment_length=l, compression_ratio=l if isinstance(l, int) and l >= 2 else 1,
                         encoder_lora=dataclasses.replace(smallest, target_modules=("q_proj",)),
                         transfer_lora=dataclasses.replace(smallest, target_modules=("k_proj",)),
                         dtype=opts.dtype or "float32")
    except ConfigError as err:
        raise ModelArgsError("; ".join(err.problems)) from None


def check_files(opts: Options, config: UIOConfig) -> None:
    """What the base directory and the parts' config tell without reading weights: an architecture
    that fits, weight and tokenizer files, parts trained on a base of this shape."""
    from transformers import AutoConfig

    from uio_ds.model.parts import check_model_dir, check_trained_parts

    if not opts.use_memory:
        try:
            positions = AutoConfig.from_pretrained(opts.base).max_position_embeddings
        except (ValueError, OSError, AttributeError):
            positions = None  # check_model_dir says what is wrong with the directory
        if positions is not None and config.segment_length >= positions:
            # (the memory model keeps one position for a <mem> token, unused without memory)
            raise ModelArgsError(f"segment_length={config.segment_length} does not fit the base model's "
                                 f"max_position_embeddings={positions}: pass segment_length=N with N < {positions}")
    try:
        base_config = check_model_dir(opts.base, config)
        if opts.use_memory:
            check_trained_parts(opts.uio, config, base_config)
    except (ValueError, OSError) as err:
        raise ModelArgsError(str(err)) from None
