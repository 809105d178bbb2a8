"""uio_ds as a model of EleutherAI's lm-evaluation-harness: ``--model uio_ds``.

Importing this module registers the model in the harness's model registry, so
``lm_eval.simple_evaluate(model="uio_ds", model_args="base=DIR,uio=PARTS", ...)`` finds it. The
harness's own command line (lm-eval 0.4.13) loads no model class from outside its own tree (no
entry point, no plugin option), so ``uio-ds lm-eval ARGS`` (``uio_ds.eval.lm_eval_cli``) imports
this module and then runs that command line with the same ARGS.

How each kind of request is read, so that a harness score means what uio_ds's own tools measure:

* ``loglikelihood``: the context is read as ``generate`` reads a prompt (``MemoryStream.prefill``:
  its full segments compressed, the last 1..l tokens through the decoder), and the continuation is
  scored as generation would read it token by token (``MemoryStream.score``: the residual
  compressed whenever it fills a segment). Requests that share a context read it once; their
  continuations are then read together, ``batch_size`` at a time (``MemoryStream.repeat``).
* ``loglikelihood_rolling``: a document's log-likelihood given the prefix token (BOS, else EOS),
  computed by ``uio-ds eval``'s own perplexity code (``UIOMethod.token_losses``: every earlier
  segment as memory), so exp(-loglikelihood / tokens) is the perplexity ``uio-ds eval`` reports for
  the same text. A tokenizer that starts every text with BOS gives that BOS as the prefix, rather
  than scoring it after a second one.
* ``generate_until``: ``uio_ds.model.generate`` (prefill, then token by token with
  re-compression), stopping at the end-of-sequence token or at the first of the task's stop
  strings; prompts of equal length and equal generation options go ``batch_size`` at a time.

Without trained parts (``uio`` unset) the model is the base model reading each segment of
``segment_length`` tokens alone, with no memory: ``uio-ds eval``'s ``no_memory`` method, which is
what ``get_model_info`` and the log call it. A text longer than the model reads (the base's
position range through memory, ``UIOMemoryModel.max_tokens_supported``; unbounded with a
``memory_window`` or without memory) is cut from the left, as the harness's own models do.
"""

from __future__ import annotations

import hashlib
import json
import logging

import lm_eval.models  # noqa: F401  (the harness's own models first: a registry that holds only ours would hide them)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from uio_ds.eval.lm_eval_args import MODEL_NAME, ModelArgsError, check_files, parse_model_args, uio_config
from uio_ds.eval.methods import UIOMethod
from uio_ds.model.generation import MemoryStream, generate
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.utils.devices import resolve_device

log = logging.getLogger(__name__)

# generation options this model acts on (after the harness's normalize_gen_kwargs)
GENERATION_OPTIONS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


@register_model(MODEL_NAME)
class UIODSLM(TemplateLM):
    """A UIO memory model (or, without trained parts, its segmented decoder alone) as an lm-eval
    model; see the module docstring for how each request is read."""

    def __init__(self, **model_args):
        super().__init__()
        from transformers import AutoTokenizer

        self.options = opts = parse_model_args(model_args)
        config = uio_config(opts)
        check_files(opts, config)
        self.tokenizer = AutoTokenizer.from_pretrained(opts.base)
        if self.tokenizer.eos_token_id is None:
            raise ModelArgsError(f"the tokenizer of {opts.base!r} has no end-of-sequence token, which the harness "
                                 "uses as a prefix and a stop: give a base directory whose tokenizer has one")
        if opts.chat_template is not None:
            with open(opts.chat_template, encoding="utf-8") as f:
                self.tokenizer.chat_template = f.read()
        self._device = resolve_device(str(opts.device))
        self.model = UIOMemoryModel.from_pretrained(opts.base, config, device=self._device)
        if opts.use_memory:
            self.model.load_trained(opts.uio)
        self.model.eval()
        self.method = UIOMethod(self.model, opts.use_memory, opts.encode_batch_size)
        log.info("uio_ds: %s", self.reading())

    # ------------------------------------------------------------------ what is evaluated

    def reading(self) -> str:
        """One line that names what is evaluated (the memory, or its absence)."""
        model = self.model
        if not self.options.use_memory:
            return (f"no_memory: the base model {self.options.base} reading each segment of "
                    f"{model.segment_length} tokens alone (no trained parts, uio unset)")
        c = model.config
        window = "every memory that fits" if c.memory_window is None else f"the last {c.memory_window} memories"
        raw = f", a raw window of {c.recent_tokens} tokens" if c.recent_tokens else ""
        raw += f", the text's first {c.sink_tokens} tokens as sinks" if c.sink_tokens else ""
        reach = f"texts up to {self.max_length} tokens" if self.max_length else "texts of any length"
        return (f"uio: {self.options.base} with the parts of {self.options.uio}, segments of {model.segment_length} "
                f"tokens compressed into {model.num_mem_tokens} memory tokens, the decoder reading {window}{raw}; "
                f"{reach}")

    def get_model_info(self) -> dict:
        """Recorded in the harness's results ("config"): which reading was evaluated."""
        c, memory = self.model.config, self.options.use_memory
        return {"uio_ds_method": "uio" if memory else "no_memory", "uio_ds_reading": self.reading(),
                "segment_length": c.segment_length, "memory_tokens": self.model.num_mem_tokens if memory else 0,
                "memory_window": c.memory_window, "recent_tokens": c.recent_tokens, "sink_tokens": c.sink_tokens,
                "max_length": self.max_length,
                "dtype": c.dtype}

    @property
    def max_length(self) -> int | None:
        """Longest text read (None: any length): the position range through memory under
        position_overflow 'error'; unbounded with a memory window, 'drop_oldest' or no memory."""
        if not self.options.use_memory or self.model.config.position_overflow != "error":
            return None
        return self.model.max_tokens_supported()

    @property
    def max_gen_toks(self) -> int:
        return 256  # the harness's models' default when a task sets none

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    # ------------------------------------------------------------------ tokens

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context, and a rolling document, are read after: BOS, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The tokenizer's own ids (BOS where it adds one, as ``uio-ds eval`` and ``generate`` read
        text), but no second BOS before a string that already starts with it (a chat template's)."""
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            add_special_tokens = False
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **extra)

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    @property
    def tokenizer_name(self) -> str:
        """The request cache's fingerprint of the prompt format: the tokenizer, and the chat
        template when one replaces the tokenizer's."""
        name = self.tokenizer.name_or_path.replace("/", "__")
        if self.options.chat_template is not None:
            name += "__" + hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest()[:12]
        return name

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.tokenizer.chat_template:
            raise ModelArgsError(f"the tokenizer of {self.options.base!r} has no chat template: give one with "
                                 "chat_template=FILE in --model_args, or drop --apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ------------------------------------------------------------------ requests

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self._device)

    def _fit(self, context: list[int], continuation: list[int]) -> list[int]:
        """``context`` cut from the left so that context + continuation (its last token only
        predicted, never read) fits the length the model reads."""
        limit = self.max_length
        if limit is None or len(context) + len(continuation) - 1 <= limit:
            return context
        if len(continuation) >= limit:
            raise ValueError(f"a continuation of {len(continuation)} tokens leaves no room for context in the "
                             f"{limit} tokens this model reads: set memory_window=N to read any length")
        log.warning("uio_ds: a context of %d tokens is cut to its last %d (the model reads %d tokens)",
                    len(context), limit + 1 - len(continuation), limit)
        return context[-(limit + 1 - len(continuation)):]

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives the continuation) per
        request ((strings), context ids, continuation ids). Each distinct context is read once."""
        groups: dict[tuple[int, ...], list[int]] = {}
        fitted = []
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("an empty continuation has no likelihood to score")
            fitted.append(self._fit(list(context), list(continuation)))
            groups.setdefault(tuple(fitted[-1]), []).append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="uio_ds loglikelihood")
        for context, members in sorted(groups.items(), key=lambda kv: -len(kv[0])):
            stream = MemoryStream(self.model, self.options.encode_batch_size, use_memory=self.options.use_memory)
            first = stream.prefill(self._tensor([list(context)]))  # (1, vocab): predicts each continuation's first token
            members = sorted(members, key=lambda i: -len(requests[i][2]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                conts = [list(requests[i][2]) for i in chunk]
                width = len(conts[0])
                # right padding: a row's own tokens all come before its padding, so no logit scored
                # reads it (not even across a compression, which every row meets at the same place)
                ids = self._tensor([c + [self.eot_token_id] * (width - len(c)) for c in conts])
                logits = first.unsqueeze(1).expand(len(chunk), 1, -1)
                if width > 1:
                    rows = stream if len(members) == 1 else stream.repeat(len(chunk))
                    logits = torch.cat([logits, rows.score(ids[:, :-1])], dim=1)
                logprobs = F.log_softmax(logits.float(), dim=-1)
                for row, (i, cont) in enumerate(zip(chunk, conts)):
                    n = len(cont)
                    picked = logprobs[row, :n].gather(-1, ids[row, :n, None]).sum()
                    greedy = bool((logits[row, :n].argmax(-1) == ids[row, :n]).all())
                    results[i] = (float(picked), greedy)
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                bar.update(len(chunk))
        bar.close()
        return results

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(document | prefix token) per request, every token scored once through memory
        (``uio-ds eval``'s perplexity); a document longer than the model reads is scored in the
        harness's rolling windows, each read from its own start."""
        out = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="uio_ds loglikelihood_rolling"):
            tokens = self.tok_encode(string)
            prefix = self.prefix_token_id
            if tokens and tokens[0] == prefix:  # the tokenizer's own BOS is the prefix
                tokens = tokens[1:]
            total = 0.0
            if tokens:
                limit = self.max_length
                if limit is None or len(tokens) + 1 <= limit:
                    windows = [([prefix], tokens)]
                else:  # each window is read whole, its last token included: limit - 1 tokens of input
                    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix, limit - 1, 1)]
                for context, predicted in windows:
                    ids = self._tensor([list(context) + list(predicted)])
                    total -= sum(self.method.last_losses(ids, len(predicted)))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when the task asks) continuations through ``generate``, cut before
        the first stop string; equal-length prompts with equal options share a batch."""
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        batches: dict[tuple[str, int], list[tuple[int, list[int], dict]]] = {}
        for i, (context, gen_kwargs) in enumerate(r.args for r in requests):
            options = self._generation_options(gen_kwargs, eos_text)
            limit = self.max_length
            ids = self.tok_encode(context)
            if limit is not None:
                room = limit - options["max_gen_toks"]
                if room < 1:
                    raise ValueError(f"max_gen_toks={options['max_gen_toks']} leaves no room for a prompt in the "
                                     f"{limit} tokens this model reads: set memory_window=N to read any length")
                if len(ids) > room:
                    log.warning("uio_ds: a prompt of %d tokens is cut to its last %d", len(ids), room)
                    ids = ids[-room:]
            key = (json.dumps(options, sort_keys=True), len(ids))
            batches.setdefault(key, []).append((i, ids, options))
        results: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="uio_ds generate_until")
        for members in batches.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for i, text in zip((c[0] for c in chunk), self._generate([c[1] for c in chunk], chunk[0][2])):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return results

    def _generation_options(self, gen_kwargs: dict, eos_text: str) -> dict:
        kwargs = dict(normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks))
        unknown = sorted(set(kwargs) - set(GENERATION_OPTIONS))
        if unknown:
            raise ValueError(f"generation options {unknown} are not supported by --model {MODEL_NAME}: it takes "
                             f"{list(GENERATION_OPTIONS)}")
        return {"until": handle_stop_sequences(kwargs["until"], eos=eos_text), "max_gen_toks": kwargs["max_gen_toks"],
                "do_sample": bool(kwargs["do_sample"]), "temperature": float(kwargs.get("temperature") or 0.0),
                "top_k": int(kwargs.get("top_k") or 0), "top_p": float(kwargs.get("top_p") or 1.0)}

    def _generate(self, prompts: list[list[int]], options: dict) -> list[str]:
        until = [s for s in options["until"] if s]

        def stopped(tokens: torch.Tensor) -> list[bool]:
            # special tokens kept: a stop string may be one (an end-of-turn token)
            texts = self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=False)
            return [any(s in text for s in until) for text in texts]

        sampling = options["do_sample"]
        result = generate(self.model, self._tensor(prompts), options["max_gen_toks"], do_sample=sampling,
                          temperature=options["temperature"] if sampling else 1.0, top_k=options["top_k"],
                          top_p=options["top_p"], stop_token_ids=[self.eot_token_id],
                          encode_batch_size=self.options.encode_batch_size, stop_when=stopped if until else None,
                          use_memory=self.options.use_memory)
        new = result.sequences[:, result.prompt_length:].tolist()
        return [postprocess_generated_text(self.tok_decode(row), until, None) for row in new]

    # ------------------------------------------------------------------ construction from the harness

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "UIODSLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "UIODSLM":
        """model_args win over what the harness adds (``--device``, ``--batch_size``): the harness
        passes its ``--device`` default, cuda:0, even where model_args say device=auto."""
        given = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**given, **dict(arg_dict)})
