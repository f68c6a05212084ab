"""`edgeqwen serve` on Qwen3.5 artifacts (hybrid fixed state + KV), driven by the official openai client on
loopback: streaming, reasoning_content, a tool round trip, json_schema, 4 concurrent clients, and a resent
conversation that prefills only what is new."""

from __future__ import annotations

import json
import threading

import pytest

from serving import Served
from test_server import PERSON, WEATHER

pytestmark = pytest.mark.slow
THINK = {"chat_template_kwargs": {"enable_thinking": True}}


@pytest.fixture(scope="module")
def server(artifacts):
    """tiny-qwen3.5 (the 0.8B config: its template starts in non-thinking mode) on a loopback server."""
    s = Served([f"q35={artifacts('tiny-qwen3.5', 'cpu-fp32').folder}"], "--max-tokens", "2048")
    s.q35 = artifacts("tiny-qwen3.5", "cpu-fp32").folder
    yield s
    assert s.stop() == 0


def test_streamed_chat_is_the_whole_answer(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Name three rivers."}]
    whole = c.chat.completions.create(model="q35", messages=msgs, max_tokens=16, temperature=0)
    parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="q35", messages=msgs, max_tokens=16, temperature=0, stream=True) if ch.choices]
    assert "".join(parts) == whole.choices[0].message.content and whole.usage.completion_tokens == 16


def test_reasoning_content_comes_apart_from_content(server):
    """Qwen3.5's template opens <think> in the prompt: even random weights start in the reasoning part."""
    c = server.client()
    r = c.chat.completions.create(model="q35", messages=[{"role": "user", "content": "Why is the sky blue?"}],
                                  max_tokens=40, temperature=0, extra_body={"thinking_budget": 6, **THINK})
    m = r.choices[0].message
    assert m.model_extra["reasoning_content"] and m.content and "</think>" not in m.content


def test_tool_call_round_trip(server):
    """Qwen3.5 calls tools in XML (<function=...><parameter=...>): the forced call follows that grammar, comes
    back as OpenAI tool_calls with typed arguments, and the call and its result render back into the prompt."""
    c = server.client()
    msgs = [{"role": "user", "content": "What's the weather in Paris this week?"}]
    r = c.chat.completions.create(model="q35", messages=msgs, tools=WEATHER, tool_choice="required", max_tokens=80,
                                  temperature=0, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    call = r.choices[0].message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert set(args) == {"city", "days"} and 1 <= args["days"] <= 7
    follow = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'}]
    r2 = c.chat.completions.create(model="q35", messages=follow, tools=WEATHER, max_tokens=5, temperature=0)
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    from edgeqwen.runtime import load

    prompt = load(server.q35).render(follow, think=False, tools=[t for t in WEATHER])
    assert f"<function=get_weather>\n<parameter=city>\n{args['city']}\n</parameter>" in prompt


def test_json_schema_output_parses_and_validates(server):
    c = server.client()
    r = c.chat.completions.create(model="q35", messages=[{"role": "user", "content": "A person, please."}],
                                  max_tokens=120, temperature=1.0, seed=1,
                                  response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"name", "age", "tags"} and 0 <= obj["age"] <= 150


def test_four_concurrent_clients_match_single_runs(server):
    """Rows of the hybrid state join and leave one shared batch; the fp32 graph gives each row the tokens it
    gets alone."""
    c = server.client()
    prompts = ["The quick brown fox", "春天来了，", "def add(a, b):", "Once upon a time"]
    alone = [c.completions.create(model="q35", prompt=p, max_tokens=20, temperature=0).choices[0].text
             for p in prompts]
    together = [""] * 4

    def go(i: int) -> None:
        together[i] = c.completions.create(model="q35", prompt=prompts[i], max_tokens=20,
                                           temperature=0).choices[0].text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert together == alone
    rows = [float(line.split()[-1]) for line in server.get("/metrics")[1].decode().splitlines()
            if line.startswith('edgeqwen_batch_rows_per_step{model="q35"}')]
    assert rows and rows[0] > 1.0


def test_a_resent_conversation_prefills_only_what_is_new(server):
    """The prefix cache parks each finished sequence's hybrid state with its turn-boundary snapshots: the next
    turn restores the one where the previous assistant header started (the template re-renders the answer)
    and reports what it reused as cached_tokens; the answer is a fresh run's."""
    from edgeqwen.runtime import load

    c = server.client()
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    msgs = [{"role": "system", "content": "Be brief and precise in every answer you give."},
            {"role": "user", "content": "Name a large river on the continent of Africa."}]
    r1 = c.chat.completions.create(model="q35", messages=msgs, max_tokens=10, temperature=0, extra_body=off)
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "And a second one?"}]
    r2 = c.chat.completions.create(model="q35", messages=msgs, max_tokens=10, temperature=0, extra_body=off)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r1.usage.prompt_tokens - 8 <= cached < r1.usage.prompt_tokens, (cached, r1.usage)
    fresh = load(server.q35).chat(msgs, max_new_tokens=10, temperature=0, think=False).finish()
    assert r2.choices[0].message.content == fresh.text
