#!/usr/bin/env python3
"""The official `openai` Python client (PyPI) against a running `oar serve`.

    python openai_client_test.py BASE_URL MODEL      e.g. http://127.0.0.1:8000 tiny

Driven by tests/cli/serve_openai.sh, which makes the venv (openai pinned) and starts the server on a tiny
random model. Checks what a client of the OpenAI API relies on: models, completions, chat completions,
streaming of both (the chunks the client parses reassemble to the non-streamed text, usage included), and
errors raised as the API defines them (openai.BadRequestError with the parameter named).
"""
import os
import sys

import openai


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=os.environ.get("OAR_TEST_API_KEY", "not-needed"),
                           max_retries=0, timeout=120)

    models = client.models.list()
    assert [m.id for m in models.data] == [model], models
    print("ok: models.list ->", models.data[0].id)

    c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert c.object == "text_completion" and c.model == model and c.id.startswith("cmpl-"), c
    assert len(c.choices) == 1 and c.choices[0].index == 0, c
    assert c.choices[0].finish_reason in ("length", "stop"), c
    assert 0 < c.usage.completion_tokens <= 12 and c.usage.prompt_tokens > 0, c.usage
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    streamed = "".join(ch.choices[0].text for ch in
                       client.completions.create(model=model, prompt="Once upon a time", max_tokens=12,
                                                 temperature=0, stream=True) if ch.choices)
    assert streamed == c.choices[0].text, (streamed, c.choices[0].text)
    again = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert again.choices[0].text == c.choices[0].text, "greedy decoding must be deterministic"
    seeded = [client.completions.create(model=model, prompt="Seeds", max_tokens=8, temperature=0.9, seed=1234)
              .choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1], seeded
    print("ok: completions (plain, streamed, greedy and seeded reproducible)")

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-"), r
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str), msg
    assert r.choices[0].finish_reason in ("length", "stop"), r
    parts, usage, roles, finishes = [], None, [], []
    for ch in client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0,
                                             stream=True, stream_options={"include_usage": True}):
        assert ch.object == "chat.completion.chunk", ch
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(parts) == msg.content, ("".join(parts), msg.content)
    assert roles == ["assistant"] and finishes == [r.choices[0].finish_reason], (roles, finishes)
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, (usage, r.usage)
    print("ok: chat completions (plain and streamed, usage in the last chunk)")

    # n, echo + logprobs (lm-evaluation-harness's loglikelihood request) and chat logprobs, as the client parses them.
    r = client.completions.create(model=model, prompt="Once upon a time", n=2, max_tokens=4, seed=3)
    assert [c.index for c in r.choices] == [0, 1] and 2 <= r.usage.completion_tokens <= 8, r
    r = client.completions.create(model=model, prompt="Once upon a time", echo=True, logprobs=2, max_tokens=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith("Once") and lp.token_logprobs[0] is None, r
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == r.usage.prompt_tokens
    assert all(v <= 0 for v in lp.token_logprobs[1:]) and all(len(t) == 2 for t in lp.top_logprobs[1:]), lp
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and all(len(c.top_logprobs) == 2 for c in content), content
    assert all(c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content), content
    m = client.models.retrieve(model)
    assert m.id == model, m
    try:
        client.models.retrieve("no-such-model")
        raise AssertionError("unknown model id accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.code == "model_not_found", e.body
    print("ok: n, echo + logprobs, chat logprobs, models.retrieve")

    def expect_bad_request(param, code=None, **kwargs):
        try:
            kwargs.setdefault("model", model)
            kwargs.setdefault("prompt", "x")
            client.completions.create(**kwargs)
        except openai.BadRequestError as e:
            assert e.status_code == 400, e
            assert e.type == "invalid_request_error" and e.param == param, (e.type, e.param, e.body)
            if code:
                assert e.code == code, (e.code, e.body)
            return str(e)
        raise AssertionError("no BadRequestError for %r" % kwargs)

    expect_bad_request("temperature", temperature=-1)
    expect_bad_request("top_p", top_p=0)
    expect_bad_request("max_tokens", max_tokens=0)
    expect_bad_request("n", n=17)
    expect_bad_request("logprobs", logprobs=21)
    expect_bad_request("model", code="model_not_found", model="no-such-model")
    expect_bad_request("prompt", code="context_length_exceeded", prompt=" ".join(["word"] * 700))
    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=4)
        raise AssertionError("empty messages accepted")
    except openai.BadRequestError as e:
        assert e.param == "messages", e.body
    print("ok: bad parameters raise openai.BadRequestError naming the parameter")
    print("openai %s: all checks passed" % openai.__version__)


if __name__ == "__main__":
    main()
