"""`edgeqwen serve` as a real server on loopback, driven by the official openai client."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest

from edgeqwen.runtime.engine import Engine
from serving import RawStream, Served, thinking_build

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def thinking_artifact(checkpoints, tmp_path_factory):
    """tiny-qwen3 with a template that opens <think> in the prompt (as Qwen3-2507 thinking models do), so
    even random weights start in the reasoning part."""
    return thinking_build(checkpoints("tiny-qwen3"), tmp_path_factory.mktemp("thinking"))


@pytest.fixture(scope="module")
def server(artifacts, thinking_artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "requests.jsonl"
    q25 = artifacts("tiny-qwen2.5", "cpu-int4").folder
    s = Served([f"qwen25={q25}", f"think={thinking_artifact}"], "--max-tokens", "4096", "--max-body-bytes", "200000",
               log=log)
    s.log = log
    s.q25 = Engine(q25)
    s.think_folder = thinking_artifact
    yield s
    assert s.stop() == 0


def test_models_and_health(server):
    ids = [m.id for m in server.client().models.list().data]
    assert ids == ["qwen25", "think"]
    h = server.health()
    assert h["status"] == "ok" and {m["backend"] for m in h["models"]} == {"batched"}


def test_chat_whole_and_streamed_agree_with_usage(server):
    c = server.client()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three rivers."}]
    r = c.chat.completions.create(model="qwen25", messages=msgs, max_tokens=12, temperature=0)
    expected_prompt = len(server.q25.encode(server.q25.render(msgs)))
    assert r.usage.prompt_tokens == expected_prompt and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == expected_prompt + 12 and r.choices[0].finish_reason == "length"
    # the same greedy continuation as the embedded runtime gives
    assert r.choices[0].message.content == server.q25.chat(msgs, max_new_tokens=12, temperature=0).finish().text
    chunks = list(c.chat.completions.create(model="qwen25", messages=msgs, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_stop_and_seed(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Count."}]
    full = c.chat.completions.create(model="qwen25", messages=msgs, max_tokens=10, temperature=0).choices[0].message.content
    cut = full[3:6]
    r = c.chat.completions.create(model="qwen25", messages=msgs, max_tokens=10, temperature=0, stop=[cut])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == full[:full.index(cut)]
    a, b = (c.chat.completions.create(model="qwen25", messages=msgs, max_tokens=10, temperature=1.0, top_p=0.9,
                                      seed=7).choices[0].message.content for _ in range(2))
    assert a == b


def test_completions_endpoint(server):
    c = server.client()
    r = c.completions.create(model="qwen25", prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert r.choices[0].text == server.q25.generate("def add(a, b):", max_new_tokens=8, temperature=0).text
    assert r.usage.completion_tokens == 8
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="qwen25", prompt="def add(a, b):", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed == r.choices[0].text


def test_reasoning_content_streams_apart_from_content(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Why is the sky blue?"}]
    r = c.chat.completions.create(model="think", messages=msgs, max_tokens=60, temperature=0,
                                  extra_body={"thinking_budget": 6})
    m = r.choices[0].message
    reasoning = m.model_extra["reasoning_content"]
    assert reasoning.endswith("based on the thinking directly now.") and m.content
    assert "</think>" not in reasoning and "</think>" not in m.content
    kinds = []
    for ch in c.chat.completions.create(model="think", messages=msgs, max_tokens=60, temperature=0, stream=True,
                                        extra_body={"thinking_budget": 6}):
        d = ch.choices[0].delta if ch.choices else None
        if d is not None and (d.model_extra or {}).get("reasoning_content"):
            kinds.append("reasoning")
        elif d is not None and d.content:
            kinds.append("content")
    assert kinds[0] == "reasoning" and kinds[-1] == "content"
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")
    # the budget's closing sentence must fit too: the runtime's context check becomes a 400, not a 500
    with pytest.raises(openai.BadRequestError, match="context length"):
        c.chat.completions.create(model="think", messages=msgs, max_tokens=2048 - r.usage.prompt_tokens,
                                  extra_body={"thinking_budget": 6})
    # enable_thinking off through chat_template_kwargs: the template pre-fills an empty think block
    off = c.chat.completions.create(model="think", messages=msgs, max_tokens=8, temperature=0,
                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.choices[0].message.content and not (off.choices[0].message.model_extra or {}).get("reasoning_content")


def test_json_schema_output_parses_and_validates(server):
    c = server.client()
    for seed in range(3):
        r = c.chat.completions.create(
            model="qwen25", messages=[{"role": "user", "content": "A person, please."}], max_tokens=120,
            temperature=1.0, seed=seed, response_format={"type": "json_schema",
                                                         "json_schema": {"name": "person", "schema": PERSON}})
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        obj = json.loads(r.choices[0].message.content)
        assert set(obj) == {"name", "age", "tags"} and isinstance(obj["name"], str) and len(obj["name"]) <= 12
        assert isinstance(obj["age"], int) and 0 <= obj["age"] <= 150 and set(obj["tags"]) <= {"a", "b"}
    r = c.chat.completions.create(model="qwen25", messages=[{"role": "user", "content": "json"}], max_tokens=200,
                                  temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # a random model may not close a free-form object in 200 tokens
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


def test_tool_call_round_trip(server):
    c = server.client()
    msgs = [{"role": "user", "content": "What's the weather in Paris this week?"}]
    r = c.chat.completions.create(model="qwen25", messages=msgs, tools=WEATHER, tool_choice="required",
                                  max_tokens=80, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and set(args) == {"city", "days"} and 1 <= args["days"] <= 7
    # streamed: the same call arrives as a tool_calls delta
    deltas = [ch.choices[0].delta for ch in c.chat.completions.create(
        model="qwen25", messages=msgs, tools=WEATHER, tool_choice="required", max_tokens=80, temperature=0,
        stream=True) if ch.choices]
    streamed = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert len(streamed) == 1 and streamed[0].function.arguments == call.function.arguments
    # the result goes back as role "tool" and is rendered by the template
    follow = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'}]
    r2 = c.chat.completions.create(model="qwen25", messages=follow, tools=WEATHER, max_tokens=5, temperature=0)
    rendered = server.q25.render(follow, tools=WEATHER)
    assert "<tool_response>\n{\"temp_c\": 18}\n</tool_response>" in rendered and "<tool_call>" in rendered
    assert r2.usage.prompt_tokens == len(server.q25.encode(rendered))


def test_disconnect_cancels_the_generation_and_frees_its_slot(server):
    body = {"model": "qwen25", "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 2000,
            "temperature": 0, "stream": True}
    with RawStream(server, "/v1/chat/completions", body) as stream:
        lines = stream.lines()
        got = [next(lines) for _ in range(6)]
        assert all(line.startswith("data: ") for line in got)
        assert server.health()["models"][0]["active"] == 1
    deadline = time.time() + 10
    while time.time() < deadline and server.health()["models"][0]["active"]:
        time.sleep(0.1)
    assert server.health()["models"][0]["active"] == 0
    time.sleep(0.3)
    last = json.loads(server.log.read_text().splitlines()[-1])
    assert last["status"] == 499 and last["completion_tokens"] < 2000


def test_concurrent_requests_share_batches_and_match_single_runs(server):
    # The fp32 graph is batch-invariant (a row's logits are bit-identical alone or in a batch of 4);
    # int4's MatMulNBits rounds differently for several rows, so exact equality is asked of fp32 only.
    c = server.client()
    prompts = ["The quick brown fox", "春天来了，", "def add(a, b):", "Once upon a time"]
    alone = [c.completions.create(model="think", prompt=p, max_tokens=24, temperature=0).choices[0].text
             for p in prompts]
    together: list[str] = [""] * 4

    def go(i: int) -> None:
        together[i] = c.completions.create(model="think", prompt=prompts[i], max_tokens=24,
                                           temperature=0).choices[0].text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert together == alone
    metrics = server.get("/metrics")[1].decode()
    rows = [float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith('edgeqwen_batch_rows_per_step{model="think"}')]
    assert rows and rows[0] > 1.0  # some graph runs carried several sequences


def test_a_resent_conversation_prefills_only_what_is_new(server):
    """OpenAI clients resend the history: the server keeps finished sequences, so the next turn reports the
    resent part as cached_tokens and feeds only the rest; what it generates is what a fresh run of the
    whole prompt generates (the fp32 model: exact greedy tokens)."""
    from edgeqwen.runtime import load

    c = server.client()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a large river."}]
    r1 = c.chat.completions.create(model="qwen25", messages=msgs, max_tokens=10, temperature=0)
    first = r1.usage.prompt_tokens
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "And a second one?"}]
    r2 = c.chat.completions.create(model="qwen25", messages=msgs, max_tokens=10, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # what the server holds after turn 1 is its prompt and the answer's tokens; turn 2's prompt re-tokenises the
    # answer's text, which need not give those tokens back (random weights pick odd splits): the reusable part
    # is the two sequences' common prefix, at least the first prompt, never the new message
    engine = server.q25
    asked = engine.encode(engine.render(msgs[:2]))
    held = asked + engine.generate(asked, max_new_tokens=10, temperature=0).token_ids
    resent = engine.encode(engine.render(msgs))
    common = next((i for i, (a, b) in enumerate(zip(held, resent)) if a != b), min(len(held), len(resent)))
    assert first == len(asked) and r2.usage.prompt_tokens == len(resent)
    assert first < common and cached == common < len(resent), (first, cached, common, len(resent))
    # completions on the fp32 model: the continued text's greedy tokens are a fresh run's
    prompt = "The quick brown fox jumps over the lazy dog. " * 3
    a = c.completions.create(model="think", prompt=prompt, max_tokens=12, temperature=0)
    longer = prompt + a.choices[0].text + " Then"
    b = c.completions.create(model="think", prompt=longer, max_tokens=12, temperature=0)
    # (the prompt's trailing space merges with the text after it: the token there differs)
    assert a.usage.prompt_tokens - 2 <= b.usage.prompt_tokens_details.cached_tokens < b.usage.prompt_tokens
    fresh = load(server.think_folder, backend="batched").generate(longer, max_new_tokens=12, temperature=0)
    assert b.choices[0].text == fresh.text
    metrics = server.get("/metrics")[1].decode()
    hits = [float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith('edgeqwen_prefix_cache_hits_total{model="think"}')]
    assert hits and hits[0] >= 1


def test_request_log_hashes_prompts_and_metrics_count(server):
    lines = [json.loads(x) for x in server.log.read_text().splitlines()]
    assert lines and all("prompt_sha256" in x and "prompt" not in x for x in lines if x["status"] == 200)
    assert not any("Name three rivers" in json.dumps(x) for x in lines)
    metrics = server.get("/metrics")[1].decode()
    for name in ("edgeqwen_requests_total", "edgeqwen_completion_tokens_total", "edgeqwen_time_to_first_token_seconds",
                 "edgeqwen_decode_tokens_per_second", "edgeqwen_queue_depth", "process_resident_memory_bytes"):
        assert name in metrics, name


BAD = [
    ("malformed JSON", b'{"model": "qwen25", "messages": [', 400, None),
    ("wrong type", {"model": "qwen25", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400,
     "temperature"),
    ("messages not a list", {"model": "qwen25", "messages": "hello"}, 400, "messages"),
    ("unknown role", {"model": "qwen25", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
    ("unknown model", {"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ("prompt over the context", {"model": "qwen25", "messages": [{"role": "user", "content": "word " * 3000}]}, 400,
     "messages"),
    ("negative max_tokens", {"model": "qwen25", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5},
     400, "max_tokens"),
    ("huge max_tokens", {"model": "qwen25", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**12},
     400, "max_tokens"),
    ("invalid schema", {"model": "qwen25", "messages": [{"role": "user", "content": "x"}],
                        "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                                    "schema": {"type": "nonsense"}}}},
     400, "response_format"),
    ("oversized body", {"model": "qwen25", "messages": [{"role": "user", "content": "x" * 300000}]}, 413, None),
    ("n > 1", {"model": "qwen25", "messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n"),
]


@pytest.mark.parametrize("what,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_openai_error_and_the_server_stays_healthy(server, what, body, status, param):
    code, reply, _ = server.post("/v1/chat/completions", body)
    assert code == status, reply
    err = reply["error"]
    assert err["message"] and err["type"] and err["param"] == param
    assert "Traceback" not in err["message"]
    assert server.health()["status"] == "ok"
    ok = server.client().chat.completions.create(model="qwen25", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2)
    assert ok.usage.completion_tokens == 2


def test_openai_client_raises_the_matching_errors(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context length"):
        c.chat.completions.create(model="qwen25", messages=[{"role": "user", "content": "x"}], max_tokens=4000)


def test_rate_limit_and_api_keys(artifacts, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-good-one\n# a comment\nsk-second\n")
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    s = Served([f"m={folder}"], "--api-key-file", str(keys), "--requests-per-minute", "3")
    try:
        msgs = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.AuthenticationError):
            s.client("sk-wrong").chat.completions.create(model="m", messages=msgs, max_tokens=2)
        assert s.post("/v1/chat/completions", {"model": "m", "messages": msgs})[0] == 401  # no key at all
        good = s.client("sk-good-one")
        for _ in range(3):
            good.chat.completions.create(model="m", messages=msgs, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as e:
            good.chat.completions.create(model="m", messages=msgs, max_tokens=2)
        assert int(e.value.response.headers["retry-after"]) >= 1
        # limits are per key: the second key still has its own budget
        s.client("sk-second").chat.completions.create(model="m", messages=msgs, max_tokens=2)
        assert s.health()["status"] == "ok"
    finally:
        assert s.stop() == 0


def test_full_queue_answers_503_with_retry_after(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    s = Served([f"m={folder}"], "--max-concurrency", "1", "--max-queue", "0")
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 2000, "stream": True}
        with RawStream(s, "/v1/chat/completions", body) as stream:
            next(stream.lines())
            code, reply, headers = s.post("/v1/chat/completions", {**body, "stream": False, "max_tokens": 2})
            assert code == 503 and reply["error"]["code"] == "server_busy" and headers["Retry-After"] == "1"
    finally:
        assert s.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    s = Served([f"m={folder}"], "--shutdown-grace", "20")
    body = {"model": "m", "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 300, "stream": True,
            "temperature": 0}
    with RawStream(s, "/v1/chat/completions", body) as stream:
        lines = stream.lines()
        next(lines)
        s.proc.send_signal(15)
        rest = list(lines)
    assert "data: [DONE]" in rest
    finals = [json.loads(x[6:]) for x in rest if x.startswith("data: {")]
    assert finals[-1]["choices"][0]["finish_reason"] == "length"
    assert s.proc.wait(30) == 0


def test_request_timeout_is_a_504_and_the_slot_comes_back(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    s = Served([f"m={folder}"], "--request-timeout", "0.5", "--max-concurrency", "1")
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 2000}
        code, reply, _ = s.post("/v1/chat/completions", body)
        assert code == 504 and reply["error"]["code"] == "timeout"
        with RawStream(s, "/v1/chat/completions", {**body, "stream": True}) as stream:
            events = [json.loads(x[6:]) for x in stream.lines() if x.startswith("data: {")]
        assert events[-1]["error"]["code"] == "timeout"
        assert s.health()["models"][0]["active"] == 0
        assert s.post("/v1/chat/completions", {**body, "max_tokens": 2})[0] == 200
    finally:
        assert s.stop() == 0
