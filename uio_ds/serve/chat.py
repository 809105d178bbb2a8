"""``uio-ds chat``: chat with a memory model in the terminal, tokens streamed as they come.

    uio-ds chat --model models/smollm2 --uio release/smollm2-uio

Each line you type is a user turn; the conversation goes through the tokenizer's chat template
and lives in one session of the scheduler, so earlier turns (and loaded documents) are read
once and kept as memory. Commands:

  /load FILE   put a text file into the conversation (read into memory with the next question)
  /memory      how much memory the conversation holds
  /reset       start a new conversation
  /quit        leave (end of input does too)
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from uio_ds.serve.requests import SamplingParams


class ChatSession:
    """A conversation over a ``Scheduler`` session: messages in, streamed answers out."""

    def __init__(self, scheduler, params: SamplingParams, system: str | None = None):
        self.scheduler, self.params, self.system = scheduler, params, system
        self.reset()

    def reset(self) -> None:
        self.session = uuid.uuid4().hex
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.pending_document: str | None = None
        self.last_usage = None

    def load(self, path: str) -> int:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.pending_document = (self.pending_document + "\n\n" if self.pending_document else "") + text
        return len(self.scheduler.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ask(self, question: str, on_text) -> str:
        content = question
        if self.pending_document is not None:
            content = f"{self.pending_document}\n\n{question}"
            self.pending_document = None
        self.messages.append({"role": "user", "content": content})
        ids = list(self.scheduler.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=True,
                                                            return_dict=True)["input_ids"])
        try:
            event = self.scheduler.generate(ids, self.params, session=self.session, on_text=on_text)
        except Exception:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": event.text})
        self.last_usage = event.usage
        return event.text

    def memory_line(self) -> str:
        u = self.last_usage
        if u is None:
            return "memory: empty (nothing asked yet)"
        m = self.scheduler.model.num_mem_tokens
        return (f"memory: {u.memory_tokens} memory tokens ({u.memory_tokens // m} segments of "
                f"{self.scheduler.model.segment_length} tokens compressed); last turn read {u.prompt_tokens - u.reused_tokens}"
                f" new prompt tokens of {u.prompt_tokens}, generated {u.completion_tokens}")


def main(argv: list[str] | None = None) -> int:
    from uio_ds.serve.api import add_model_args, load_scheduler

    p = argparse.ArgumentParser(prog="uio-ds chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--max-tokens", type=int, default=256, help="longest answer, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--system", default=None, help="a system message to start every conversation with")
    args = p.parse_args(argv)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
    problems = params.problems()
    if problems:
        p.error("; ".join(problems))
    try:
        scheduler = load_scheduler(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not getattr(scheduler.tokenizer, "chat_template", None):
        print("error: the model's tokenizer has no chat template; use `uio-ds generate` for plain text", file=sys.stderr)
        scheduler.close()
        return 2
    chat = ChatSession(scheduler, params, args.system)
    interactive = sys.stdin.isatty()
    print(f"chatting with {scheduler.model_name} (segments of {scheduler.model.segment_length} tokens, ratio "
          f"{scheduler.model.config.compression_ratio}); /load FILE, /memory, /reset, /quit", flush=True)
    try:
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                chat.reset()
                print("(new conversation)", flush=True)
            elif line == "/memory":
                print(chat.memory_line(), flush=True)
            elif line.startswith("/load"):
                path = line[len("/load"):].strip()
                if not os.path.isfile(path):
                    print(f"(no file {path!r})", flush=True)
                    continue
                try:
                    tokens = chat.load(path)
                except UnicodeDecodeError:
                    print(f"({path} is not UTF-8 text)", flush=True)
                    continue
                print(f"(loaded {path}: {tokens} tokens, read into memory with your next message)", flush=True)
            elif line.startswith("/"):
                print(f"(unknown command {line.split()[0]}: /load FILE, /memory, /reset, /quit)", flush=True)
            else:
                try:
                    chat.ask(line, lambda text: print(text, end="", flush=True))
                except (ValueError, RuntimeError) as err:
                    print(f"\n(error: {err})", flush=True)
                    continue
                print(flush=True)
                print(f"[{chat.memory_line()}]", flush=True)
    finally:
        scheduler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
