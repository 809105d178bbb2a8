"""Token ids and scored spans of records (text, completion, instruction, chat), as the cache's
worker processes and the streaming reader make them; and the tokenizer's digest, part of a
cache key."""

from __future__ import annotations

import hashlib
import json

from uio_ds.config import SourceConfig


class Tokenise:
    """Token ids and scored spans of records of one source kind; picklable for worker processes.

    Returns per record ``input_ids``, ``length`` and ``score_spans`` (flat [start, stop, ...] of
    the scored token ranges; empty for text, where every token is scored) or None when the record
    cannot be rendered (the reason in ``self.last_problem``)."""

    def __init__(self, tokenizer, source: SourceConfig):
        self.tokenizer, self.kind = tokenizer, source.resolved_kind
        self.eos = source.eos
        self.chat = self.kind == "chat" or (self.kind == "instruction" and source.chat_template)
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"data source {source.path!r} asks for the tokenizer's chat template, but the tokenizer "
                             "has none: give a model whose tokenizer_config.json has a chat_template, or set "
                             "chat_template: false (instruction records then use prompt_template)")
        if self.eos and not self.chat and self.kind in ("completion", "instruction") and tokenizer.eos_token_id is None:
            raise ValueError(f"data source {source.path!r}: eos is set but the tokenizer has no EOS token; set "
                             "eos: false or give a tokenizer with one")

    def _ids(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _chat(self, messages: list[dict]) -> tuple[list[int], list[int]] | None:
        from jinja2 import TemplateError

        try:
            return self._render_chat(messages)
        except TemplateError:  # e.g. a template that insists on alternating user and assistant turns
            return None

    def _render_chat(self, messages: list[dict]) -> tuple[list[int], list[int]] | None:
        render = self.tokenizer.apply_chat_template
        ids = list(render(messages, tokenize=True, return_dict=True)["input_ids"])
        spans = []
        for i, turn in enumerate(messages):
            if turn["role"] != "assistant":
                continue
            before = list(render(messages[:i], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
            through = list(render(messages[: i + 1], tokenize=True, return_dict=True)["input_ids"])
            # the template must render a conversation's start as the start of the whole, or the
            # scored tokens would not be the assistant's
            if ids[: len(through)] != through or through[: len(before)] != before:
                return None
            spans += [len(before), len(through)]
        return ids, spans

    def __call__(self, batch: dict) -> dict:
        out = {"input_ids": [], "length": [], "score_spans": []}
        keep = list(range(len(next(iter(batch.values()), []))))
        if not keep:
            return out
        if self.kind == "text":
            for ids in self.tokenizer([batch["text"][i] for i in keep])["input_ids"]:
                out["input_ids"].append(ids)
                out["score_spans"].append([])
        elif not self.chat:
            prompts = self.tokenizer([batch["prompt"][i] for i in keep])["input_ids"]
            # prompt and completion are tokenised apart, so the scored tokens are exactly the completion's
            completions = self.tokenizer([batch["completion"][i] for i in keep], add_special_tokens=False)["input_ids"]
            tail = [self.tokenizer.eos_token_id] if self.eos else []
            for p, c in zip(prompts, completions):
                out["input_ids"].append(p + c + tail)
                out["score_spans"].append([len(p), len(p) + len(c) + len(tail)])
        else:
            for i in keep:
                rendered = self._chat(batch["messages"][i])
                if rendered is None:
                    continue  # counted by the caller: the template does not render turns as prefixes
                out["input_ids"].append(rendered[0])
                out["score_spans"].append(rendered[1])
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out


def token_features():
    from datasets import Features, List, Value

    return Features({"input_ids": List(Value("int32")), "length": Value("int32"), "score_spans": List(Value("int32"))})


def tokenizer_digest(tokenizer) -> str:
    vocab = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer.get_vocab())
    extra = [getattr(tokenizer, "chat_template", None) or "", tokenizer.eos_token_id]
    return hashlib.sha1((vocab + json.dumps(extra)).encode()).hexdigest()
