"""``uio-ds serve``: an OpenAI-compatible HTTP server over a trained memory model.

    uio-ds serve --model models/smollm2 --uio release/smollm2-uio --port 8000

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``"stream": true`` as server-sent events, ``stop``, ``max_tokens``, ``temperature``, ``top_p``,
``seed``, usage counts; ``stream_options.include_usage`` adds a last chunk with usage), and
``GET /health``. Chat messages go through the tokenizer's chat template.

A request may carry ``"session": "ID"`` (with the openai client: ``extra_body={"session": ID}``):
the conversation's memory is kept between requests, and when the next request's prompt starts
with the conversation so far only the new tokens are read. The response's ``uio`` field says how
many prompt tokens were reused, how many memory tokens the decoder reads, and the generated
token ids (a client that continues with ``prompt + completion_token_ids + ...`` as token ids
is sure to match the session; a chat re-rendered from text matches when the answer's text
tokenises back to the same tokens, as it usually does).

A request that cannot be served (bad parameters, a text past the model's position range, a
second request for a busy session) gets a 4xx with an OpenAI-style error body; the server goes on.
"""

# (no "from __future__ import annotations": FastAPI reads the handlers' annotations as objects)

import argparse
import asyncio
import functools
import json
import os
import socket
import sys
import time
import uuid
from typing import Callable

from uio_ds.serve.errors import Overloaded, RequestError, SessionBusy
from uio_ds.serve.requests import Event, SamplingParams
from uio_ds.serve.scheduler import Scheduler


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           retry_after: int | None = None):
    from fastapi.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _params(body: dict, default_max_tokens: int) -> SamplingParams:
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list):
        raise RequestError(f"stop={stop!r}: must be a string or a list of strings")
    if body.get("n", 1) != 1:
        raise RequestError(f"n={body.get('n')!r}: only n=1 is served")
    unsupported = [k for k in ("logprobs", "top_logprobs", "echo", "tools", "functions", "logit_bias", "suffix")
                   if body.get(k)] + (["best_of"] if body.get("best_of", 1) != 1 else [])
    if unsupported:
        raise RequestError(f"{', '.join(unsupported)}: not supported by this server")
    temperature = body.get("temperature", 1.0)
    params = SamplingParams(
        max_tokens=next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None),
                        default_max_tokens),
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if body.get("top_p") is None else body["top_p"],
        stop=stop, seed=body.get("seed"))
    if params.seed is not None and not isinstance(params.seed, int):
        raise RequestError(f"seed={params.seed!r}: must be an integer")
    return params


def _session(body: dict) -> str | None:
    session = body.get("session")
    if session is not None and (not isinstance(session, str) or not 0 < len(session) <= 256):
        raise RequestError(f"session={session!r}: must be a string of 1-256 characters")
    return session


class _Reply:
    """The OpenAI-shaped answer to one request: streamed chunks (server-sent events) or one
    JSON body, for a completion or a chat completion."""

    def __init__(self, model_name: str, chat: bool):
        self.model_name, self.chat = model_name, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.kind = "chat.completion" if chat else "text_completion"

    def chunk(self, text: str | None, finish: str | None, first: bool = False, usage: dict | None = None) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        out = {"id": self.id, "object": self.kind + (".chunk" if self.chat else ""), "created": self.created,
               "model": self.model_name, "choices": [choice] if usage is None else []}
        if usage is not None:
            out["usage"] = usage
        return out

    async def stream(self, events: asyncio.Queue, include_usage: bool, cancel: Callable[[], None]):
        """Server-sent events, one chunk per event, then ``[DONE]``; ``cancel()`` when the client goes
        away before the end (the request stops instead of decoding for nobody)."""
        done = False
        try:
            async for chunk in self._chunks(events, include_usage):
                yield chunk
            done = True
        finally:
            if not done:
                cancel()

    async def _chunks(self, events: asyncio.Queue, include_usage: bool):
        if self.chat:
            yield f"data: {json.dumps(self.chunk(None, None, first=True))}\n\n"
        while True:
            event = await events.get()
            if event.error:
                yield f"data: {json.dumps({'error': {'message': event.error, 'type': 'server_error'}})}\n\n"
                break
            if event.text:
                yield f"data: {json.dumps(self.chunk(event.text, None))}\n\n"
            if event.finish_reason:
                yield f"data: {json.dumps(self.chunk(None if self.chat else '', event.finish_reason))}\n\n"
                if include_usage:
                    yield f"data: {json.dumps(self.chunk(None, None, usage=event.usage.to_dict()))}\n\n"
                break
        yield "data: [DONE]\n\n"

    async def whole(self, events: asyncio.Queue, session: str | None, cancel: Callable[[], None]):
        """The complete answer as one JSON response, with the memory's usage under ``uio``;
        ``cancel()`` when the client goes away first."""
        from fastapi.responses import JSONResponse

        parts = []
        while True:
            try:
                event = await events.get()
            except asyncio.CancelledError:  # the connection closed: nobody reads the answer
                cancel()
                raise
            if event.error:
                return _error(500, event.error)
            parts.append(event.text)
            if event.finish_reason:
                break
        text = "".join(parts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": event.finish_reason,
                   "logprobs": None} if self.chat else
                  {"index": 0, "text": text, "finish_reason": event.finish_reason, "logprobs": None})
        return JSONResponse({"id": self.id, "object": self.kind, "created": self.created, "model": self.model_name,
                             "choices": [choice], "usage": event.usage.to_dict(),
                             "uio": {"session": session, "reused_prompt_tokens": event.usage.reused_tokens,
                                     "memory_tokens": event.usage.memory_tokens,
                                     "memory_cache": {"hits": event.usage.cache_hits,
                                                      "misses": event.usage.cache_misses},
                                     "completion_token_ids": event.token_ids}})


def _completion_ids(body: dict, tokenizer) -> list[int]:
    """The prompt of a completion request: one non-empty string, or token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return prompt  # already token ids
    if isinstance(prompt, str) and prompt:
        return tokenizer(prompt)["input_ids"]
    raise RequestError("prompt: give one non-empty string (or a list of token ids)")


def _chat_ids(body: dict, tokenizer) -> list[int]:
    """The prompt of a chat request: its messages through the tokenizer's chat template."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise RequestError("messages: give a non-empty list of {\"role\", \"content\"} objects with string content")
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("the model's tokenizer has no chat template: use /v1/completions")
    return list(tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], add_generation_prompt=True,
        tokenize=True, return_dict=True)["input_ids"])


def create_app(scheduler: Scheduler, api_key: str | None = None):
    """The FastAPI application over ``scheduler``. ``api_key``: the ``/v1`` routes answer 401
    unless the request carries ``Authorization: Bearer <api_key>`` (``/health`` and ``/metrics``
    stay open, for probes and scrapers). ``GET /metrics`` serves the scheduler's ``metrics``."""
    import hmac

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response, StreamingResponse

    app = FastAPI(title="uio_ds", description="OpenAI-compatible server for UIO memory models")
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):  # noqa: ANN001
        return _error(400, f"invalid request: {exc.errors()}")

    @app.middleware("http")
    async def _authorised(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "invalid or missing API key: send the header Authorization: Bearer <key>",
                              code="invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "sessions": len(scheduler.sessions), "in_flight": len(scheduler._requests)}

    @app.get("/metrics")
    async def metrics():
        if scheduler.metrics is None:
            return _error(404, "this server keeps no metrics")
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(scheduler.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": scheduler.model_name, "object": "model", "created": created,
                                            "owned_by": "uio_ds"}]}

    async def _body(request: Request) -> dict:
        try:
            body = await request.json()
        except json.JSONDecodeError as err:
            raise RequestError(f"the request body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        if body.get("model") not in (None, scheduler.model_name):
            raise RequestError(f"model={body.get('model')!r}: this server serves {scheduler.model_name!r} (GET /v1/models)")
        return body

    async def _answer(request: Request, chat: bool):
        try:
            body = await _body(request)
            ids = (_chat_ids if chat else _completion_ids)(body, scheduler.tokenizer)
            # OpenAI's defaults: 16 new tokens for a completion; a chat's answer is left long
            params, session = _params(body, 256 if chat else 16), _session(body)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[Event] = asyncio.Queue()
            rid = scheduler.submit(ids, params, lambda e: loop.call_soon_threadsafe(events.put_nowait, e), session)
        except SessionBusy as err:
            return _error(409, str(err), "session")
        except Overloaded as err:
            return _error(503, str(err), retry_after=1)
        except RequestError as err:
            return _error(400, str(err))
        reply = _Reply(scheduler.model_name, chat)
        cancel = functools.partial(scheduler.cancel, rid)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(reply.stream(events, include_usage, cancel), media_type="text/event-stream")
        return await reply.whole(events, session, cancel)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _answer(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(request, chat=True)

    return app


def load_scheduler(args) -> Scheduler:
    """The model, tokenizer and scheduler of the ``serve`` / ``chat`` arguments."""
    from transformers import AutoTokenizer

    from uio_ds.config import UIOConfig
    from uio_ds.model.memory_model import UIOMemoryModel

    problems = scheduler_problems(args)
    if problems:
        raise ValueError("; ".join(problems))
    config = None if args.uio else UIOConfig(segment_length=args.segment_length or 1024,
                                              compression_ratio=args.compression_ratio or 8, dtype=args.dtype)
    model = UIOMemoryModel.from_pretrained(args.model, config, trained_path=args.uio, device=args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    name = args.name or (args.uio or args.model).rstrip("/").split("/")[-1]
    cache = None
    if args.memory_cache_mb > 0 or args.memory_cache:
        from uio_ds.model.memory_cache import MemoryCache

        cache = MemoryCache(model, max_bytes=int(args.memory_cache_mb * 2**20), directory=args.memory_cache)
    metrics = None
    if getattr(args, "metrics", False):
        from uio_ds.serve.metrics import ServingMetrics

        metrics = ServingMetrics()
    return Scheduler(model, tokenizer, model_name=name, max_batch=args.max_batch, max_sessions=args.max_sessions,
                     session_ttl_s=args.session_ttl, memory_cache=cache, max_queue=args.max_queue, metrics=metrics,
                     prefill_chunk=args.prefill_chunk, prefill_share=args.prefill_share)


def scheduler_problems(args) -> list[str]:
    """What is wrong with the scheduler's options, found before the model loads."""
    out = []
    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                        ("--max-sessions", args.max_sessions)):
        if value < 1:
            out.append(f"{flag} {value}: must be >= 1")
    if args.prefill_chunk is not None and args.prefill_chunk < 1:
        out.append(f"--prefill-chunk {args.prefill_chunk}: must be >= 1 segment (or left out for the memory budget)")
    if not 0 < args.prefill_share <= 1:
        out.append(f"--prefill-share {args.prefill_share}: must be in (0, 1]")
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model directory")
    p.add_argument("--uio", default=None, help="trained UIO parts (default: untrained parts, for trying it out)")
    p.add_argument("--segment-length", type=int, default=None, help="without --uio: segment length l")
    p.add_argument("--compression-ratio", type=int, default=None, help="without --uio: compression ratio")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="without --uio: parameter dtype")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--name", default=None, help="model name in the API (default: the parts' folder name)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together in one decoder pass (continuous batching; more wait for a row)")
    p.add_argument("--max-sessions", type=int, default=32, help="conversations kept in memory (least recent dropped)")
    p.add_argument("--session-ttl", type=float, default=1800.0, help="seconds a conversation is kept after its last use")
    p.add_argument("--memory-cache-mb", type=float, default=512.0,
                   help="host memory for segment memories shared by every request (0: no cache)")
    p.add_argument("--memory-cache", default=None, metavar="DIR",
                   help="also keep segment memories in DIR (safetensors), across restarts")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests queued or running at most; one more gets 503 with Retry-After")
    p.add_argument("--prefill-chunk", type=int, default=None, metavar="SEGMENTS",
                   help="segments per encoder call while reading a prompt (default: the encoder's memory budget)")
    p.add_argument("--prefill-share", type=float, default=0.5,
                   help="share of the time reading prompts may take while others decode (1: a piece every round)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="uio-ds serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("UIO_API_KEY"),
                   help="require Authorization: Bearer KEY on /v1 (default: $UIO_API_KEY; unset: open)")
    args = p.parse_args(argv)
    args.metrics = True  # GET /metrics
    try:
        import uvicorn
    except ImportError:
        print("error: serving needs fastapi and uvicorn: pip install 'uio_ds[serve]'", file=sys.stderr)
        return 2
    try:
        sock = listening_socket(args.host, args.port)  # before the model loads: a taken port fails at once
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port} ({err.strerror or err}): another process holds "
              "the port, or the address is not this machine's; pass --port N (or --host)", file=sys.stderr)
        return 2
    try:
        scheduler = load_scheduler(args)
    except (ValueError, OSError) as err:
        sock.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"serving {scheduler.model_name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler, api_key=args.api_key), log_level="warning"))
    server.run(sockets=[sock])
    scheduler.close()
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), which uvicorn then serves on; raises OSError when the
    port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is free, a live one not
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    sys.exit(main())

