"""The server's parts without a server: request checks, tool-call parsing, grammar masks, limits, config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.server.config import ServerConfig, hash_key
from edgeqwen.server.errors import ApiError
from edgeqwen.server.grammar import Constraint, Grammars
from edgeqwen.server.limits import Gate
from edgeqwen.server.params import chat_job, completion_job, parse_body
from edgeqwen.server.tools import ToolCallSplitter

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _split(splitter: ToolCallSplitter, text: str, step: int) -> tuple[str, list]:
    """``text`` fed ``step`` characters at a time: (all content, all calls)."""
    content, calls = "", []
    for i in range(0, len(text), step):
        c, found = splitter.feed(text[i:i + step])
        content += c
        calls += found
    return content + splitter.flush(), calls


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_tool_calls_are_split_from_content_however_the_text_is_chunked(step):
    text = "Let me check." + CALL + "\n" + CALL.replace("Paris", "Rome") + "\nDone <tool_ca"
    content, calls = _split(ToolCallSplitter(), text, step)
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert calls[0].name == "get_weather" and calls[0].id != calls[1].id
    assert content == "Let me check.Done <tool_ca"  # the unfinished marker is text again at the end


def test_a_block_that_is_not_a_call_stays_content():
    s = ToolCallSplitter()
    content, calls = s.feed("<tool_call>not json</tool_call>")
    assert calls == [] and content == "<tool_call>not json</tool_call>"


XML_CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Jose\nCA\n</parameter>\n<parameter=days>\n3\n"
            "</parameter>\n<parameter=metric>\ntrue\n</parameter>\n<parameter=at>\n{\"h\": 9}\n</parameter>\n"
            "<parameter=note>\n42\n</parameter>\n</function>\n</tool_call>")
XML_FUNCTIONS = {"get_weather": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
    "at": {"type": "object"}, "note": {"type": "string"}}}}}


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_xml_tool_calls_are_split_and_typed_by_the_functions_schema(step):
    """Qwen3.5's calls (Qwen3-Coder's XML body): one parameter block per argument, each value raw text typed
    as the function's schema types it (a string keeps its newlines and stays a string even when it reads as
    a number); the JSON body of Qwen2.5 / Qwen3 still parses beside it."""
    content, calls = _split(ToolCallSplitter(XML_FUNCTIONS), "Checking." + XML_CALL + "\n" + CALL, step)
    assert content == "Checking." and [c.name for c in calls] == ["get_weather"] * 2
    assert json.loads(calls[0].arguments) == {"city": "San Jose\nCA", "days": 3, "metric": True, "at": {"h": 9},
                                              "note": "42"}
    assert json.loads(calls[1].arguments) == {"city": "Paris"}
    untyped = ToolCallSplitter().feed(XML_CALL)[1][0]  # no schema: every value stays text
    assert json.loads(untyped.arguments)["days"] == "3"


def test_qwen35_template_renders_calls_and_results_in_xml_and_opens_reasoning():
    """The fixture template: an assistant call (OpenAI's JSON-string arguments) becomes <function=...> blocks,
    the prompt opens <think> (an empty block when thinking is off), and the compiler reads its format."""
    from edgeqwen.compiler.package import tool_call_format
    from edgeqwen.runtime.chat import ChatTemplate, ThinkingState
    from edgeqwen.testmodels.chat_templates import QWEN3_THINKING, qwen35_template

    source = qwen35_template(thinking_default=True)
    assert tool_call_format(source) == "xml" and tool_call_format(QWEN3_THINKING) == "json"
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
            {"role": "tool", "tool_call_id": "c", "content": "18"}]
    text = ChatTemplate(source).render(msgs)
    assert "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>" in text
    assert "<tool_response>\n18\n</tool_response>" in text and text.endswith("<|im_start|>assistant\n<think>\n")
    assert ChatTemplate(source).render(msgs[:1], enable_thinking=False).endswith("<think>\n\n</think>\n\n")
    assert ChatTemplate(qwen35_template(False)).render(msgs[:1]).endswith("</think>\n\n")
    state = ThinkingState(think_start=1, think_end=2, tool_call=3, in_reasoning=True)
    assert [state.route(t) for t in (9, 3, 9)] == ["reasoning", "content", "content"]  # a call ends the reasoning


@pytest.mark.parametrize("body,param", [
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
     "response_format"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
])
def test_chat_fields_are_checked(body, param):
    with pytest.raises(ApiError) as e:
        chat_job(body)
    assert e.value.status == 400 and e.value.param == param


def test_chat_job_reads_openai_fields():
    job = chat_job({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                                 {"type": "text", "text": "b"}]},
                                               {"role": "user", "content": "hi"}],
                    "max_completion_tokens": 9, "stop": "x", "stream": True, "stream_options": {"include_usage": True},
                    "chat_template_kwargs": {"enable_thinking": False}, "thinking_budget": 5, "top_p": 0})
    assert job.messages[0] == {"role": "system", "content": "ab"} and job.max_tokens == 9 and job.stop == ["x"]
    assert job.include_usage and job.think is False and job.thinking_budget == 5
    assert job.temperature == 0.0  # top_p 0 means the most likely token
    assert completion_job({"model": "m", "prompt": ["hello"]}).prompt == "hello"
    with pytest.raises(ApiError):
        parse_body(b"[1, 2]")


@pytest.fixture(scope="module")
def qwen_grammars(checkpoints):
    """(tokenizer folder, Grammars) of the Qwen vocabulary: llguidance's tokenizer is made once (~2 s)."""
    folder = checkpoints("tiny-qwen2.5")
    return folder, Grammars(folder / "tokenizer.json", 151936, [151645, 151643])


def test_grammar_masks_give_schema_valid_json_from_random_logits(qwen_grammars):
    folder, grammars = qwen_grammars
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9},
                                               "s": {"type": "string", "maxLength": 5}},
              "required": ["n", "s"], "additionalProperties": False}
    compiled = grammars.json_schema(schema)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rng = np.random.default_rng(0)
    for _ in range(3):
        c, ids = Constraint(compiled), []
        while not c.done() and len(ids) < 100:
            allowed = c.mask()
            logits = rng.standard_normal(151936)
            if allowed is not None:
                logits[~allowed[:151936]] = -np.inf
            t = int(np.argmax(logits))
            if t in (151645, 151643):
                break
            c.advance(t)
            ids.append(t)
        obj = json.loads(tok.decode(ids))
        assert set(obj) == {"n", "s"} and 1 <= obj["n"] <= 9 and len(obj["s"]) <= 5
    with pytest.raises(ValueError, match="nonsense"):
        grammars.json_schema({"type": "nonsense"})
    with pytest.raises(ValueError):
        Constraint(compiled).advance(151645)  # the end is not allowed before the object is


def test_xml_call_grammar_gives_calls_the_parser_types_back_from_random_logits(qwen_grammars):
    """A forced call in Qwen3.5's XML body: random logits through the grammar's masks always give a complete
    call whose arguments, parsed back, satisfy the schema (required keys, integer range, string length)."""
    folder, grammars = qwen_grammars
    fn = {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 6}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city", "days"]}}
    compiled = grammars.tool_call([fn], "xml")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rng = np.random.default_rng(1)
    for _ in range(3):
        c, ids = Constraint(compiled), []
        while not c.done() and len(ids) < 200:
            logits = rng.standard_normal(151936)
            allowed = c.mask()
            if allowed is not None:
                logits[~allowed[:151936]] = -np.inf
            t = int(np.argmax(logits))
            c.advance(t)
            ids.append(t)
        s = ToolCallSplitter({"get_weather": fn})
        content, calls = s.feed(tok.decode(ids))
        args = json.loads(calls[0].arguments)
        assert content == "" and {"city", "days"} <= set(args) <= {"city", "days", "unit"}
        assert 1 <= args["days"] <= 7 and 1 <= len(args["city"]) <= 6 and args.get("unit", "c") in ("c", "f")


def test_keys_are_compared_hashed_and_limits_are_per_caller():
    gate = Gate(ServerConfig(models=["x"], api_key_sha256=[hash_key("k1")], requests_per_minute=2,
                             tokens_per_minute=100))
    with pytest.raises(ApiError) as e:
        gate.identify("Bearer nope", "1.2.3.4")
    assert e.value.status == 401
    who = gate.identify("Bearer k1", "1.2.3.4")
    gate.admit(who)
    gate.admit(who)
    with pytest.raises(ApiError) as e:
        gate.admit(who)
    assert e.value.status == 429 and 1 <= e.value.retry_after <= 60
    other = Gate(ServerConfig(models=["x"], tokens_per_minute=100))
    caller = other.identify(None, "1.2.3.4")
    other.admit(caller)
    other.spend(caller, 150)
    with pytest.raises(ApiError, match="100 tokens per minute"):
        other.admit(caller)
    other.admit(other.identify(None, "5.6.7.8"))  # another address has its own budget


def test_config_file_flags_and_refusals(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('[server]\nmodels = ["a"]\nport = 9001\nmax_queue = 3\n')
    c = ServerConfig.load(str(f), {"port": 9002, "host": None})
    assert (c.port, c.max_queue, c.host) == (9002, 3, "127.0.0.1")
    with pytest.raises(EdgeQwenError, match="needs API keys"):
        ServerConfig.load(str(f), {"host": "0.0.0.0"})
    ServerConfig.load(str(f), {"host": "0.0.0.0", "allow_unauthenticated": True})
    with pytest.raises(EdgeQwenError, match="unknown setting"):
        ServerConfig.load(str(f), {"max_qeue": 1})
    with pytest.raises(EdgeQwenError, match="64 lower-case hex"):
        ServerConfig.load(str(f), {"api_key_sha256": ["sk-plain-key"]})
    f.write_text("[server\n")
    with pytest.raises(EdgeQwenError, match="not valid TOML"):
        ServerConfig.load(str(f), {})


def test_serve_refuses_a_busy_port_and_a_missing_artifact_in_one_line(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "serve", str(tmp_path), "--port", str(port)],
                           capture_output=True, text=True)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "serve", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "serve", "--hash-key", "sk-1"], capture_output=True,
                       text=True)
    assert r.stdout.strip() == hash_key("sk-1")
