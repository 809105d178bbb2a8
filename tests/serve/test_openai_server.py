"""The OpenAI-compatible server on the tiny model, driven by the real ``openai`` client: the
answers equal the model's own greedy generation, streamed or not; sessions reuse memory; bad
requests get a 4xx and the server goes on."""

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch
from helpers import free_port, load, perturb_trainable
from transformers import AutoTokenizer

from uio_ds.model.generation import generate
from uio_ds.serve.api import create_app
from uio_ds.serve.errors import SessionBusy
from uio_ds.serve.requests import SamplingParams
from uio_ds.serve.scheduler import Scheduler
from uio_ds.serve.sessions import SessionStore
from uio_ds.serve.text import TextStream


@contextlib.contextmanager
def serving(scheduler: Scheduler):
    """The app over ``scheduler`` on a loopback port, in a thread; yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        scheduler.close()


def post(port: int, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON reply) of a POST to the server, without a client library's checks."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(tiny_dirs):
    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    scheduler = Scheduler(model, tokenizer, model_name="tiny-uio", max_batch=4)
    with serving(scheduler) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        yield client, scheduler, model, tokenizer, port


def greedy(model, tokenizer, ids: list[int], max_new: int) -> tuple[str, list[int]]:
    """The model's own greedy continuation, cut at EOS (what the server must return)."""
    out = generate(model, torch.tensor([ids]), max_new, stop_token_ids=[tokenizer.eos_token_id])
    new = out.sequences[0, len(ids):].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    return tokenizer.decode(new, skip_special_tokens=True), new


PROMPT = "Once upon a time the old miller walked to the river and"


def test_models_and_completion_equal_greedy_generation(served):
    client, scheduler, model, tokenizer, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny-uio"]
    ids = tokenizer(PROMPT)["input_ids"]
    want, tokens = greedy(model, tokenizer, ids, 24)
    got = client.completions.create(model="tiny-uio", prompt=PROMPT, max_tokens=24, temperature=0)
    assert got.choices[0].text == want
    assert got.choices[0].finish_reason == ("stop" if tokens[-1] == tokenizer.eos_token_id else "length")
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(ids), len(tokens))
    # streamed: the deltas add up to the same text, then a usage chunk
    chunks = list(client.completions.create(model="tiny-uio", prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == got.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == len(tokens) and len(chunks) > 3


def test_chat_completion_applies_the_chat_template(served):
    client, scheduler, model, tokenizer, _ = served
    messages = [{"role": "user", "content": "Tell me about the miller."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    want, _ = greedy(model, tokenizer, list(ids), 20)
    got = client.chat.completions.create(model="tiny-uio", messages=messages, max_tokens=20, temperature=0)
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want
    assert got.usage.prompt_tokens == len(ids)
    stream = list(client.chat.completions.create(model="tiny-uio", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want


def test_stop_sequence_cuts_the_text(served):
    client, scheduler, model, tokenizer, _ = served
    full = client.completions.create(model="tiny-uio", prompt=PROMPT, max_tokens=30, temperature=0).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), full
    for stream in (False, True):
        out = client.completions.create(model="tiny-uio", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop],
                                        stream=stream)
        text = "".join(c.choices[0].text for c in out if c.choices) if stream else out.choices[0].text
        assert text == full[: full.index(stop)], (stream, stop)


def test_session_reads_only_the_new_tokens(served):
    """A follow-up in a session reads its new tokens only, and answers as a fresh read of the whole."""
    client, scheduler, model, tokenizer, port = served
    document = tokenizer(" ".join(["The pass key is 7731, remember it."] * 12))["input_ids"]
    first = client.completions.create(model="tiny-uio", prompt=document, max_tokens=8, temperature=0,
                                      extra_body={"session": "s1"})
    text, answer = greedy(model, tokenizer, document, 8)  # the tokens the server generated
    assert first.choices[0].text == text and first.model_extra["uio"]["completion_token_ids"] == answer
    follow = document + answer + tokenizer(" What was the key?", add_special_tokens=False)["input_ids"]
    status, again = post(port, "/v1/completions", {"model": "tiny-uio", "prompt": follow, "max_tokens": 8,
                                                   "temperature": 0, "session": "s1"})
    assert status == 200
    # everything but the last generated token was read into memory during the first request
    assert again["uio"]["session"] == "s1"
    assert again["uio"]["reused_prompt_tokens"] == len(document) + len(answer) - 1
    assert again["uio"]["memory_tokens"] > 0
    fresh = client.completions.create(model="tiny-uio", prompt=follow, max_tokens=8, temperature=0)
    assert again["choices"][0]["text"] == fresh.choices[0].text
    # a prompt that does not continue the session is read from the start, and replaces it
    status, other = post(port, "/v1/completions", {"prompt": "A new story.", "max_tokens": 2, "session": "s1"})
    assert status == 200 and other["uio"]["reused_prompt_tokens"] == 0


def test_concurrent_requests_of_any_length_decode_together_and_equal_alone(served):
    """Continuous batching: prompts of different lengths (different memories and residuals) and a
    session's request decode in shared decoder passes, and each answer is the model's own."""
    client, scheduler, model, tokenizer, _ = served
    prompts = [" ".join(["The miller walked to the river and"] * k) for k in (1, 3, 6, 9)]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) == 4
    want = [greedy(model, tokenizer, tokenizer(p)["input_ids"], 30)[0] for p in prompts]
    sizes, real = [], scheduler._batch.step

    def spy(tokens):
        sizes.append(len(tokens))
        return real(tokens)

    scheduler._batch.step = spy
    results = [None] * len(prompts)

    def ask(i):
        session = {"session": "batched"} if i == 2 else None
        results[i] = client.completions.create(model="tiny-uio", prompt=prompts[i], max_tokens=30, temperature=0,
                                               extra_body=session).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        scheduler._batch.step = real
    assert results == want
    assert max(sizes) >= 3, sizes  # rows of different lengths (and the session) read in one pass
    assert len(sizes) < 4 * 29, sizes


def test_a_request_that_cannot_join_the_batch_fails_alone(served):
    """An error while a request joins the decoder batch ends that request (500, its message) and
    the server goes on serving the next."""
    _, scheduler, _, _, port = served
    real = scheduler._batch.add

    def broken(stream):
        scheduler._batch.add = real
        raise RuntimeError("no room for this row")

    scheduler._batch.add = broken
    try:
        status, reply = post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
    finally:
        scheduler._batch.add = real
    assert status == 500 and "RuntimeError: no room for this row" in reply["error"]["message"]
    status, reply = post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
    assert status == 200 and reply["usage"]["completion_tokens"] == 4
    assert not scheduler._requests


@pytest.mark.parametrize("body, words", [
    ({"max_tokens": 0}, ["max_tokens=0"]),
    ({"temperature": 5}, ["temperature=5"]),
    ({"n": 2}, ["only n=1"]),
    ({"model": "gpt-4"}, ["serves 'tiny-uio'"]),
    ({"prompt": ""}, ["prompt"]),
    ({"logprobs": 3}, ["logprobs", "not supported"]),
    ({"stop": 7}, ["stop=7"]),
    ({"session": ""}, ["session="]),
])
def test_bad_requests_get_400_and_the_server_goes_on(served, body, words):
    client, scheduler, model, tokenizer, port = served
    request = {"model": "tiny-uio", "prompt": "Hello", "max_tokens": 4, **body}
    status, reply = post(port, "/v1/completions", request)
    assert status == 400, reply
    message = reply["error"]["message"]
    assert all(w in message for w in words), message
    known = {k: v for k, v in request.items() if k != "session"}
    with pytest.raises(openai.BadRequestError):  # the client raises the 400 as its own error
        client.completions.create(**known, extra_body={k: v for k, v in request.items() if k == "session"})
    assert client.completions.create(model="tiny-uio", prompt="Hello", max_tokens=2).choices[0].text is not None


def test_malformed_bodies_get_400(served):
    *_, port = served
    assert post(port, "/v1/chat/completions", raw=b"{not json")[0] == 400
    assert post(port, "/v1/chat/completions", [1, 2])[0] == 400
    status, reply = post(port, "/v1/chat/completions", {"model": "tiny-uio", "messages": [{"role": "user", "content": 3}]})
    assert status == 400 and "messages" in reply["error"]["message"]


def test_text_past_the_position_range_is_refused(short_context_dir):
    """A 64-position model: a prompt + max_tokens that would pass its positions is a 400 before any work."""
    model = load(short_context_dir)
    tokenizer = AutoTokenizer.from_pretrained(short_context_dir)
    with serving(Scheduler(model, tokenizer, model_name="short")) as port:
        status, reply = post(port, "/v1/completions", {"prompt": "word " * 400, "max_tokens": 8})
        assert status == 400 and "max_position_embeddings=64" in reply["error"]["message"]
        assert post(port, "/v1/completions", {"prompt": "word", "max_tokens": 4})[0] == 200


def test_session_store_caps_expires_and_refuses_a_busy_session():
    store = SessionStore(max_sessions=2, ttl_s=0.2)
    for key in ("a", "b", "c"):
        store.reserve(key)
        assert store.take(key) is None
        store.put(key, type("S", (), {"last_used": 0.0})())
    store.reserve("a")
    assert len(store) == 2 and store.take("a") is None  # "a", the least recently used, was dropped
    with pytest.raises(SessionBusy):
        store.reserve("a")  # its request is still running
    store.put("a", None)
    time.sleep(0.3)
    store.reserve("b")
    assert store.take("b") is None and len(store) == 0  # expired


def test_a_busy_session_is_409_and_bad_token_ids_are_400(served):
    """A second request on a session that is still answering is refused at once with 409; a prompt of
    token ids outside the vocabulary, negative or not integers is a 400 naming the problem."""
    _, scheduler, model, _, port = served
    first = threading.Thread(target=post, args=(port, "/v1/completions",
                                                {"prompt": PROMPT, "max_tokens": 300, "session": "busy"}))
    first.start()
    deadline = time.time() + 30
    while "busy" not in scheduler.sessions._busy and time.time() < deadline:
        time.sleep(0.01)
    status, reply = post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "session": "busy"})
    first.join(timeout=120)
    assert status == 409 and "still answering" in reply["error"]["message"], reply
    assert post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "session": "busy"})[0] == 200
    vocab = model.vocab_size
    for prompt, words in (([5, vocab + 7, -3], f"must be in [0, {vocab})"), ([5, -3], "got -3"),
                          ([5, 6.5], "give one non-empty string")):
        status, reply = post(port, "/v1/completions", {"prompt": prompt, "max_tokens": 2})
        assert status == 400 and words in reply["error"]["message"], (prompt, reply)


def test_a_request_whose_client_left_stops(served):
    """A streaming client that disconnects after its first chunk: its request ends at the next step
    (finish reason 'cancelled'), long before max_tokens, and the server goes on."""
    import http.client

    _, scheduler, _, _, port = served
    ended = []
    real = scheduler._finish
    scheduler._finish = lambda r: ended.append((r.finished, len(r.generated))) or real(r)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 2000, "stream": True,
                                                            "stop": []}),
                     {"content-type": "application/json"})
        reply = conn.getresponse()
        assert reply.status == 200 and reply.read(6) == b"data: "
        conn.sock.close()  # the client goes away mid-stream
        conn.close()
        deadline = time.time() + 60
        while not ended and time.time() < deadline:
            time.sleep(0.02)
    finally:
        scheduler._finish = real
    assert ended and ended[0][0] == "cancelled" and ended[0][1] < 2000, ended
    assert not scheduler._requests


def test_a_taken_port_is_refused_before_the_model_loads(tiny_dirs, capsys):
    import socket

    from uio_ds.serve.api import main as serve_main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code = serve_main(["--model", "/nonexistent/model", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err


@pytest.mark.parametrize("flags, words", [
    (["--max-batch", "0"], "--max-batch 0: must be >= 1"),
    (["--prefill-share", "0"], "--prefill-share 0.0: must be in (0, 1]"),
    (["--prefill-chunk", "0", "--max-queue", "0"], "--max-queue 0: must be >= 1; --prefill-chunk 0: must be >= 1"),
])
def test_bad_scheduler_options_are_refused_before_the_model_loads(flags, words, capsys):
    from uio_ds.serve.api import main as serve_main

    # the model directory does not exist: reaching it would be another error
    code = serve_main(["--model", "/nonexistent/model", "--port", "0", *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "nonexistent" not in err, err


def test_text_stream_holds_back_partial_characters_and_stop_prefixes(tiny_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    text = "The miller said: é!END and more"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, ["END"])
    pieces = [stream.push(t) for t in ids]
    assert "".join(pieces) == "The miller said: é!" and stream.stopped
    assert all("\ufffd" not in p for p in pieces)
    plain = TextStream(tokenizer, ["ENDX"])
    out = "".join(plain.push(t) for t in ids) + plain.flush()
    assert out == text and not plain.stopped


def test_engine_rejects_bad_sampling_before_queueing(served):
    _, scheduler, *_ = served
    with pytest.raises(ValueError, match="top_p=0"):
        scheduler.submit([5, 6], SamplingParams(top_p=0), lambda e: None)


def test_the_memory_cache_is_shared_by_requests_and_reported(tiny_dirs):
    """Two requests (no session) over the same long document: the second reads the document's
    segments from the cache, says so in its ``uio`` field, and answers the same."""
    from uio_ds.model.memory_cache import MemoryCache

    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    document = " ".join(["the miller walked to the river"] * 40)
    with serving(Scheduler(model, tokenizer, model_name="cached", memory_cache=MemoryCache(model))) as port:
        status, first = post(port, "/v1/completions", {"prompt": document, "max_tokens": 6, "temperature": 0})
        status2, second = post(port, "/v1/completions", {"prompt": document, "max_tokens": 6, "temperature": 0})
    assert status == status2 == 200
    segments = len(tokenizer(document)["input_ids"]) // model.segment_length
    assert first["uio"]["memory_cache"] == {"hits": 0, "misses": segments}
    assert second["uio"]["memory_cache"] == {"hits": segments, "misses": 0}
    assert second["choices"][0]["text"] == first["choices"][0]["text"]


def test_api_key_metrics_and_a_full_queue(tiny_dirs):
    """With --api-key the /v1 routes need it (401 without, the openai client with it works);
    /metrics reports latencies, outcomes, batches and the queue in Prometheus' format; a full queue
    answers 503 with Retry-After while the running request goes on."""
    from uio_ds.serve.metrics import ServingMetrics

    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    scheduler = Scheduler(model, tokenizer, model_name="ops", max_queue=1, metrics=ServingMetrics())
    port = free_port()
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(scheduler, api_key="sesame"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        status, reply = post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesame", max_retries=0, timeout=60)
        done = client.completions.create(model="ops", prompt=PROMPT, max_tokens=3, temperature=0)
        assert done.usage.completion_tokens == 3
        answers = [done]
        long = threading.Thread(target=lambda: answers.append(client.completions.create(
            model="ops", prompt=PROMPT, max_tokens=400, temperature=0)))
        long.start()
        while not scheduler._requests:
            time.sleep(0.005)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", headers={
            "content-type": "application/json", "authorization": "Bearer sesame"},
            data=json.dumps({"prompt": PROMPT, "max_tokens": 2}).encode())
        with pytest.raises(urllib.error.HTTPError) as full:
            urllib.request.urlopen(request, timeout=60)
        assert full.value.code == 503 and full.value.headers["Retry-After"] == "1"
        long.join(timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as reply:
            text = reply.read().decode()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        scheduler.close()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    generated = sum(a.usage.completion_tokens for a in answers)
    assert len(answers) == 2 and values["uio_generated_tokens_total"] == generated
    assert values["uio_time_to_first_token_seconds_count"] == 2
    assert values["uio_inter_token_latency_seconds_count"] == generated - 2
    assert sum(v for k, v in values.items() if k.startswith("uio_requests_total{")) == 2
    assert values['uio_rejected_requests_total{reason="overloaded"}'] == 1
    # one decoder pass for every token but each request's last (it is not read back)
    assert values["uio_requests_in_flight"] == 0 and values["uio_batch_size_count"] == generated - 2


def test_a_long_prompt_is_read_between_the_other_streams_tokens(tiny_dirs):
    """Chunked prefill: while a new request's long prompt is read (one encoder call a round), a
    running request keeps getting tokens; both answers equal the model's own generation."""
    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    scheduler = Scheduler(model, tokenizer, model_name="chunked")
    times: dict[str, list[float]] = {"a": [], "b": []}
    done = {k: threading.Event() for k in times}
    finals = {}

    def emit(name):
        def on(event):
            if event.text or event.finish_reason:
                times[name].append(time.monotonic())
            if event.finish_reason or event.error:
                finals[name] = event
                done[name].set()
        return on

    short = tokenizer(PROMPT)["input_ids"]
    long_prompt = tokenizer(" ".join(["the miller walked to the river and back"] * 120))["input_ids"]
    params = SamplingParams(max_tokens=200, temperature=0.0, stop=[])
    try:
        scheduler.submit(short, params, emit("a"))
        while len(times["a"]) < 3:
            time.sleep(0.001)
        submitted = time.monotonic()
        scheduler.submit(long_prompt, SamplingParams(max_tokens=4, temperature=0.0, stop=[]), emit("b"))
        assert done["b"].wait(120) and done["a"].wait(120)
    finally:
        scheduler.close()
    first_b = times["b"][0]
    during = [t for t in times["a"] if submitted < t < first_b]
    segments = len(long_prompt) // model.segment_length
    assert model.encode_batch_for(segments * model.segment_length) < segments  # several encoder calls
    assert len(during) >= 2, (len(during), segments)
    for name, ids, n in (("a", short, 200), ("b", long_prompt, 4)):
        want = generate(model, torch.tensor([ids]), n, stop_token_ids=[tokenizer.eos_token_id]).sequences[0, len(ids):]
        got = finals[name].token_ids
        assert got == want[: len(got)].tolist() and (len(got) == n or got[-1] == tokenizer.eos_token_id)


def test_a_cancelled_request_waiting_for_a_row_ends_at_once(tiny_dirs):
    """With every row taken, a request whose prompt is read waits; when its client leaves it ends
    (cancelled, no token) at the next step, not when a row frees."""
    model = load(tiny_dirs["llama"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    scheduler = Scheduler(model, tokenizer, model_name="one-row", max_batch=1)
    scheduler.stop_token_ids = []  # the long request must not end early at an end-of-text token
    ids = tokenizer(PROMPT)["input_ids"]
    events = {"long": [], "waiting": []}
    try:
        scheduler.submit(ids, SamplingParams(max_tokens=400), events["long"].append)
        waiting = scheduler.submit(ids, SamplingParams(max_tokens=4), events["waiting"].append)
        deadline = time.time() + 60
        while not any(r.id == waiting for r in scheduler._ready) and time.time() < deadline:
            time.sleep(0.01)
        scheduler.cancel(waiting)
        while not any(e.finish_reason for e in events["waiting"]) and time.time() < deadline:
            time.sleep(0.01)
        long_ended = any(e.finish_reason for e in list(events["long"]))
    finally:
        scheduler.close()
    final = [e for e in events["waiting"] if e.finish_reason]
    assert final and final[0].finish_reason == "cancelled" and final[0].token_ids == []
    assert not long_ended  # it ended while the only row was still taken
