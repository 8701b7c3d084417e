#!/usr/bin/env python3
"""Builds tests/fixtures/chat/*.json: chat templates rendered by Hugging Face transformers' apply_chat_template
(jinja2 with trim_blocks and lstrip_blocks, HF's tojson / raise_exception), which oar's own Jinja subset
(src/chat/jinja.cpp) must reproduce exactly.

Run with transformers 4.46.3 and jinja2 3.1.x (for example the reference venv plus `pip install jinja2==3.1.4`):
    /work/venv-ref/bin/python tests/reference/make_chat_template_fixtures.py

Writes
  <name>.json for each template below: {"name", "template", "bos_token", "eos_token",
               "cases": [{"messages", "add_generation_prompt", "expected"} | {..., "error"}]}
  llama3_real.json   the same for the real Llama-3-Instruct template in ../shared/data/llama3_tokenizer
                     (only when present; the template string is copied into the fixture, not the tokenizer)
  semantics.json     {"cases": [{"template", "vars", "expected"} | {..., "error"}]}: single expressions and
                     statements compared one by one, rendered by the same compiled-template path
The Llama-2 and Llama-3 built-in templates are copies of oar's (src/chat/chat_template.cpp); the C++ test
checks that the copies still match.
"""
import json
import os
import sys

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "tests", "fixtures", "chat")
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")

BUILTIN_LLAMA2 = r"""{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system_message = messages[0]['content'] | trim -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set system_message = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] not in ['user', 'assistant'] or (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/... after an optional system message') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- if loop.first and system_message -%}
{{- bos_token + '[INST] <<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] | trim + ' [/INST]' -}}
{%- else -%}
{{- bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' -}}
{%- endif -%}
{%- else -%}
{{- ' ' + message['content'] | trim + ' ' + eos_token -}}
{%- endif -%}
{%- endfor -%}
"""

BUILTIN_LLAMA3 = r"""{{- bos_token -}}
{%- for message in messages -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"""

# Mistral-Instruct's format, written as a one-line template like the ones such checkpoints ship.
MISTRAL_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Qwen2's ChatML format, written over several indented lines so that trim_blocks and lstrip_blocks matter.
QWEN2_STYLE = """{% for message in messages %}
    {% if loop.first and messages[0]['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

# Many constructs at once, as newer templates (Llama-3.1, Qwen2.5) use them.
FEATURES = """{#- A template that exercises the interpreter. -#}
{%- set ns = namespace(system='', n_user=0) -%}
{%- for m in messages if m.role == 'system' -%}
  {%- set ns.system = ns.system ~ (m.content | trim) -%}
{%- endfor -%}
{%- if ns.system | length > 0 %}[SYS:{{ ns.system | upper }}]
{% endif -%}
{%- for m in messages -%}
  {%- if m['role'] == 'system' %}{% continue %}{% endif -%}
  {%- if m.role == 'user' -%}
    {%- set ns.n_user = ns.n_user + 1 -%}
    <{{ loop.index }}/{{ loop.length }} user {{ ns.n_user }}{{ ' first' if loop.first else '' }}>
  {%- elif m.role == 'assistant' -%}
    <{{ loop.revindex0 }} asst{% if loop.last %} last{% endif %}>
  {%- else -%}
    <{{ m.role | title }}>
  {%- endif -%}
  {{- m.content[:20] -}}
  {%- if m.content | length > 20 %}...{{ m.content[-3:] }}{% endif %}
  {{- '|' ~ (m.content.split() | length) ~ ' words|' -}}
  {%- if 'stop' in m.content %}{% break %}{% endif %}
{%- else -%}
  (no messages)
{%- endfor %}
{{ {'n': messages | length, 'gen': add_generation_prompt, 'tools': tools}|tojson }}
{%- if add_generation_prompt and messages and messages[-1]['role'] != 'assistant' %}
<assistant>
{%- endif %}
"""

CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "Hello, who are you?"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why is the sky blue?"}],
    "multi_turn": [
        {"role": "system", "content": "  Be kind.  \n"},
        {"role": "user", "content": "  Hi there!\n"},
        {"role": "assistant", "content": "Hello! How can I help?  "},
        {"role": "user", "content": "Tell me a joke about a llama, please, and keep it short."},
    ],
    "unicode_and_markup": [
        {"role": "user", "content": "类型#裙 🦙 naïve «quotes» \"double\" 'single' back\\slash {{ not_a_var }} {% raw %}\n\tTabbed"},
        {"role": "assistant", "content": "Ok: 😀 stop"},
        {"role": "user", "content": "again"},
    ],
    "empty_content": [{"role": "user", "content": ""}],
    "two_users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "tool_role": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}],
}

SEMANTICS = [
    ("{% for i in [1,2] %}{% if i == 1 %}{% set x = 'a' %}{% endif %}[{{ x }}]{% endfor %}", {}),
    ("{% set x = 'o' %}{% for i in [1,2] %}{% if i == 1 %}{% set x = 'a' %}{% endif %}[{{ x }}]{% endfor %}{{x}}", {}),
    ("{{ 1.0 }} {{ 1e16 }} {{ 0.0001 }} {{ 1/3 }} {{ [1,'a',none,true] }} {{ {'a':1} }} {{ 3 // 2 }} {{ -3 % 2 }}", {}),
    ("{{ 'x' ~ 1 ~ none ~ 2.5 ~ true }}", {}),
    ("{{ x.y }}", {}),
    ("{{ x is defined }}{{ (x|length) }}{{ x|trim }}|{{ x }}|", {}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ 1 + 'a' }}", {}),
    ("{{ 1 + 2 * 3 ~ 4 }}", {}),
    ("{{ (1 + 2) * 3 ~ 4 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 7 // -2 }} {{ 7 % -3 }} {{ 7.5 % 2 }}", {}),
    ("{{ 'abc'[1:] }} {{ [1,2,3][::-1] }} {{ 'héllo'|length }} {{ 'héllo'[1] }} {{ 'héllo'[-2:] }} {{ [1,2,3,4,5][1:4:2] }}", {}),
    ("  {% if true %}\n  x\n  {% endif %}\n  y\n", {}),
    ("a  {%- if true -%}  b  {%- endif %}  \n c", {}),
    ("a\n  {%+ if true %}b{% endif +%}\nc", {}),
    ("{% if true %}  \n x{% endif %}\n{{ 'v' }}  \n  {{- 'w' -}}  \n z", {}),
    ("{% for m in ms %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}", {"ms": [1, 2, 3]}),
    ("{% for m in ms %}{{ loop.previtem }}<{{ m }}>{{ loop.nextitem }};{% endfor %}", {"ms": ["a", "b", "c"]}),
    ("{{ raise_exception('boom: ' ~ 3) }}", {}),
    ("{{ 1 == 1.0 }}{{ true == 1 }}{{ 'a' < 'b' }}{{ [1] == [1] }}{{ none == none }}{{ 'a' != 'a' }}{{ [1,2] < [1,3] }}", {}),
    ("{{ 1 < 'a' }}", {}),
    ("{% set ns = namespace(found=false, items=[]) %}{% for i in [1,2] %}{% set ns.found = true %}{% endfor %}{{ ns.found }}", {}),
    ("{% set x = 1 %}{% set x.y = 2 %}", {}),
    ("{{ 'x' if false }}|{{ none }}|{{ 2 ** 10 }}|{{ 7 / 2 }}|{{ 'a' if 0 else 'b' if 1 else 'c' }}", {}),
    ("{{ 'a' 'b' }} {{ \"it's\" }} {{ 'a\\nb' }} {{ 'tab\\tq\\'' }} {{ '\\x41\\u00e9\\U0001F999' }} {{ 'back\\\\slash \\d' }}", {}),
    ("{% for k, v in d.items() %}{{k}}={{v}};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{{ d.keys()|list }}{{ d.values()|list }}", {"d": {"a": 1, "b": [2]}}),
    ("{{ d.get('a') }}{{ d.get('z', 5) }}{{ d.get('z') }}{{ 'a' in d }}{{ 'z' not in d }}{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}", {"d": {"a": 1}}),
    ("{{ m['content'] }}{{ m.content }}{{ m.nope }}|{{ m['nope'] is defined }}", {"m": {"content": "hi"}}),
    ("{{ [1,2] + [3] }}{{ 'ab' * 2 }}{{ 3 * 'x' }}{{ ' x '.strip() }}{{ 'a,b,,c'.split(',') }}{{ '  a  b '.split() }}{{ 'a b c'.split(' ', 1) }}", {}),
    ("{{ x.y.z }}", {}),
    ("{{ messages[0]['role'] }}", {"messages": []}),
    ("{{ messages[0] }}|{{ messages[5] is defined }}", {"messages": []}),
    ("{{ 0.1 + 0.2 }} {{ 1e-5 }} {{ 123456789012345678.0 }} {{ 1.5e300 }} {{ 10000000000000000.0 }} {{ 1e15 }} {{ -0.0 }} {{ 2.5e-5 }} {{ 100.0 }}", {}),
    ("{% for i in range(3) %}{{ i }}{% else %}none{% endfor %}{% for i in [] %}{{ i }}{% else %}empty{% endfor %}{{ range(2, 10, 3)|list }}", {}),
    ("{% for i in range(5) if i is odd %}{{ loop.index }}:{{ i }}/{{ loop.length }} {% endfor %}", {}),
    ("{{ {'a': 'x\"y\\n', 'b': [1, 2.5, none, true, false], 'c': {}} | tojson }} {{ 'é<>&\\'' | tojson }} {{ [] | tojson }}", {}),
    ("{{ {'a': [1, {'b': 2}], 'c': 'd'} | tojson(indent=2) }}", {}),
    ("{{ 'Hello World'|lower }}{{ 'ab'|upper }}{{ [3,1]|first }}{{ [3,1]|last }}{{ ['a','b']|join(', ') }}{{ [1,2]|join }}{{ 'hello world'|title }}{{ 'hELLO'|capitalize }}", {}),
    ("{{ x|default('d') }}{{ ''|default('e', true) }}{{ ''|default('e') }}{{ none|default('n') }}{{ x|d('dd') }}", {}),
    ("{% if x is not defined %}nd{% endif %}{% if not x is defined %}nd2{% endif %}{% if x is undefined %}u{% endif %}", {}),
    ("{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 1 == 1 == 1 }}", {}),
    ("{% set x %}inner{{ 1 }}{% endset %}[{{ x }}]", {}),
    ("{{ -1|abs }} {{ not 1 == 2 }} {{ not true and false }} {{ -3|abs + 1 }}", {}),
    ("{{ true and 'x' }} {{ false or 'y' }} {{ '' or 0 }} {{ none and 1 }} {{ [] or {} }}", {}),
    ("{% for i in [1,2,3,4] %}{% if i == 2 %}{% continue %}{% endif %}{{ i }}{% if i == 3 %}{% break %}{% endif %}{% endfor %}", {}),
    ("{#- c -#}  x {# c2 #}\n y\n  {# c3 #}\nz", {}),
    ("{{ 'abc'.startswith('a') }} {{ 'abc'.endswith(('c','d')) }} {{ 'abc'.replace('b','x') }} {{ 'A b-c'.title() }} {{ 'aB'.capitalize() }} {{ 'xxhixx'.strip('x') }} {{ '  l'.lstrip() }}|{{ 'r  '.rstrip() }}|", {}),
    ("{{ [1,2]|length }}{{ {'a':1}|length }}{{ 'ab'|count }}{{ 'a-b'.find('-') }}{{ 'aaa'.count('a') }}{{ ','.join(['x', 'y']) }}", {}),
    ("line1\n{% if true %}\nline2\n{% endif %}\nline3\n", {}),
    ("{{ x }}", {"x": 3.5}),
    ("{{ x.a[1].b }} {{ x['a'][0] }} {{ x.a.0 }}", {"x": {"a": [7, {"b": "deep"}]}}),
    ("{{ 42|string ~ 'x' }} {{ '12'|int + 1 }} {{ 'x'|int }} {{ '2.5'|float }} {{ 3|float }} {{ [3, 4]|list }} {{ 'ab'|list }} {{ [1,2]|reverse|list }} {{ 'abc'|reverse }}", {}),
    ("{{ 'a\\u00a0b '|trim }}|{{ '\\u3000x\\n'|trim }}|{{ 'a  b'|replace(' ', '_') }}", {}),
    ("{% if a %}A{% elif b %}B{% elif c %}C{% else %}D{% endif %}", {"a": 0, "b": "", "c": [1]}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}{% for c in 'hé' %}[{{ c }}]{% endfor %}", {}),
    ("{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby(3) }}{{ none is none }}{{ 1 is number }}{{ 'a' is string }}{{ {} is mapping }}{{ [1] is iterable }}{{ 1 is integer }}{{ 1.0 is float }}{{ true is boolean }}{{ x is none }}", {"x": None}),
    ("{{ x is eq 3 }}{{ x is ne(3) }}{{ x in [3] }}{{ 'A' is upper }}{{ 'a' is lower }}", {"x": 3}),
    ("{% generation %}gen {{ 1 }}{% endgeneration %}", {}),
    ("{{ 5 / 0 }}", {}),
    ("{% for x in (1, 2) %}{{ x }}{% endfor %}{{ (1, 2)|length }}{{ ()|length }}", {}),
]


def dummy_tokenizer(bos, eos):
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    if bos is not None:
        tok.bos_token = bos
    if eos is not None:
        tok.eos_token = eos
    return tok


def render_cases(template, bos, eos):
    tok = dummy_tokenizer(bos, eos)
    cases = []
    for name, messages in CONVERSATIONS.items():
        for gen in (False, True):
            case = {"conversation": name, "messages": messages, "add_generation_prompt": gen}
            try:
                case["expected"] = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                           add_generation_prompt=gen)
            except Exception as e:  # the template refused the conversation (raise_exception) or failed
                case["error"] = str(e)
            cases.append(case)
    return cases


def write(name, obj):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", os.path.relpath(path, REPO))


def main():
    templates = [
        ("builtin_llama2", BUILTIN_LLAMA2, "<s>", "</s>"),
        ("builtin_llama3", BUILTIN_LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
        ("mistral_style", MISTRAL_STYLE, "<s>", "</s>"),
        ("qwen2_style", QWEN2_STYLE, None, "<|im_end|>"),
        ("features", FEATURES, "<s>", "</s>"),
    ]
    cfg_path = os.path.join(SHARED, "llama3_tokenizer", "tokenizer_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        templates.append(("llama3_real", cfg["chat_template"], cfg.get("bos_token"), cfg.get("eos_token")))
    else:
        print("note: %s not found; llama3_real.json left as it is" % cfg_path, file=sys.stderr)
    for name, template, bos, eos in templates:
        write(name, {"name": name, "template": template, "bos_token": bos or "", "eos_token": eos or "",
                     "cases": render_cases(template, bos, eos)})

    cases = []
    for template, variables in SEMANTICS:
        case = {"template": template, "vars": variables}
        try:
            case["expected"] = _compile_jinja_template(template).render(**variables)
        except Exception as e:
            case["error"] = "%s: %s" % (type(e).__name__, e)
        cases.append(case)
    write("semantics", {"cases": cases})


if __name__ == "__main__":
    main()
