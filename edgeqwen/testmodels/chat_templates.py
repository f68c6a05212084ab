"""Chat templates written into fixture checkpoints, matching the behaviour of Qwen's own.

Real checkpoints carry their template in tokenizer_config.json; the compiler copies whatever the
checkpoint has. These exist so locally built fixtures behave like Qwen2.5, Qwen3 and Qwen3.5.
"""


# Tool use as Qwen2.5 and Qwen3 templates render it: the functions in the system turn, the
# assistant's calls as <tool_call> blocks, consecutive tool results grouped in one user turn.
_TOOLS_SYSTEM = """\
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- elif default_system %}{{- default_system + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
"""
_TOOL_CALLS = """\
{%- for tool_call in message.tool_calls or [] %}
{%- set call = tool_call.function if tool_call.function is defined else tool_call %}
{{- ('\\n' if content or not loop.first else '') + '<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
{{- call.arguments if call.arguments is string else (call.arguments | tojson) }}
{{- '}\\n</tool_call>' }}
{%- endfor %}
"""
_TOOL_RESULT = """\
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
"""

# Qwen3 / Qwen3.5's history: the last user query found first (only assistant turns after it keep their
# reasoning), each turn rendered, an assistant turn's reasoning taken from reasoning_content or split off its
# content; the assistant branch goes on with the template's own rendering of reasoning and content.
_HISTORY_WITH_REASONING = """\
{%- set ns = namespace(found=false, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
{%- set index = (messages|length - 1) - loop.index0 %}
{%- if message.role == 'user' and not ns.found %}
{%- set ns.found = true %}
{%- set ns.last_query_index = index %}
{%- endif %}
{%- endfor %}
{%- for message in messages %}
{%- set content = message.content if message.content is string else '' %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{%- set reasoning_content = '' %}
{%- if message.reasoning_content is string %}
{%- set reasoning_content = message.reasoning_content %}
{%- elif '</think>' in content %}
{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
"""

QWEN25_CHATML = """\
{%- if tools %}
{%- set default_system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
""" + _TOOLS_SYSTEM + """\
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- set content = message.content if message.content is string else '' %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' + content }}
""" + _TOOL_CALLS + """\
{{- '<|im_end|>\\n' }}
""" + _TOOL_RESULT + """\
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen3: reasoning of earlier turns is dropped from the history; only assistant turns after the
# last user query keep their <think> block. enable_thinking=false pre-fills an empty think block.
QWEN3_THINKING = """\
{%- if tools %}
""" + _TOOLS_SYSTEM + """\
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
""" + _HISTORY_WITH_REASONING + """\
{%- if loop.index0 > ns.last_query_index and reasoning_content %}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
{%- else %}
{{- '<|im_start|>assistant\\n' + content }}
{%- endif %}
""" + _TOOL_CALLS + """\
{{- '<|im_end|>\\n' }}
""" + _TOOL_RESULT + """\
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}
{%- endif %}
{%- endif %}
"""

# Qwen3.5: tools as Qwen3-Coder calls them, in XML (<function=name> with one <parameter=key> block per
# argument), the reasoning block opened in the prompt (the model writes only </think>; thinking off pre-fills an
# empty block), earlier turns' reasoning dropped. Qwen3.5's own template was not found offline: this follows the
# behaviour its serving stacks document (vLLM's Qwen3 parsers: "<think> in the prompt", the XML call grammar)
# and the tool instructions quoted from it in public ports; the small models default to thinking off.
_QWEN35_TOOLS_SYSTEM = """\
{{- '<|im_start|>system\\n# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nIf you choose to call a function ONLY reply in the following format with NO suffix:\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n</function>\\n</tool_call>' }}
{%- if messages[0].role == 'system' and messages[0].content %}{{- '\\n\\n' + messages[0].content }}{%- endif %}
{{- '<|im_end|>\\n' }}
"""
_QWEN35_TOOL_CALLS = """\
{%- for tool_call in message.tool_calls or [] %}
{%- set call = tool_call.function if tool_call.function is defined else tool_call %}
{{- ('\\n\\n' if content and loop.first else '\\n' if not loop.first else '') + '<tool_call>\\n<function=' + call.name + '>\\n' }}
{%- for key, value in (call.arguments if call.arguments is mapping else {}).items() %}
{{- '<parameter=' + key + '>\\n' + (value if value is string else (value | tojson)) + '\\n</parameter>\\n' }}
{%- endfor %}
{{- '</function>\\n</tool_call>' }}
{%- endfor %}
"""


def qwen35_template(thinking_default: bool) -> str:
    """Qwen3.5's chat behaviour (see above); ``thinking_default``: the mode when enable_thinking is not given."""
    default = "true" if thinking_default else "false"
    return """\
{%- set thinking = enable_thinking if enable_thinking is defined else """ + default + """ %}
{%- if tools %}
""" + _QWEN35_TOOLS_SYSTEM + """\
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
""" + _HISTORY_WITH_REASONING + """\
{%- if loop.index0 > ns.last_query_index %}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
{%- else %}
{{- '<|im_start|>assistant\\n' + content }}
{%- endif %}
""" + _QWEN35_TOOL_CALLS + """\
{{- '<|im_end|>\\n' }}
""" + _TOOL_RESULT + """\
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n<think>\\n' }}
{%- if not thinking %}
{{- '\\n</think>\\n\\n' }}
{%- endif %}
{%- endif %}
"""


# Qwen3.5 sizes whose template starts in non-thinking mode (the others think by default)
QWEN35_NON_THINKING = ("Qwen3.5-0.8B",)
