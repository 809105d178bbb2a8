"""Text streamed as it is decoded: a token that ends inside a multi-byte character, or text that
may be the start of a stop sequence, is held back until it is settled."""

from __future__ import annotations


class TextStream:
    """Incremental detokenisation with stop sequences: ``push(token)`` returns settled text."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # a character cut in the middle: wait for its next bytes
        for s in self.stop:
            at = text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.stopped = True
                out, self.sent = text[self.sent:at], at
                return out
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        end = max(self.sent, len(text) - hold)
        out, self.sent = text[self.sent:end], end
        return out

    def flush(self) -> str:
        """Held-back text at the end of generation (a stop sequence's prefix that never completed)."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        out, self.sent = text[self.sent:], len(text)
        return out
