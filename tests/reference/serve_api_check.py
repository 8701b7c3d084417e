#!/usr/bin/env python3
"""End-to-end API semantics of `oar serve` over HTTP, against Hugging Face `tokenizers` (tests/cli/serve_api.sh).

    serve_api_check.py URL MODEL_NAME HF_TOKENIZER_JSON [PREDICT_OUTPUT_JSON PREDICT_PROMPT MAX_LENGTH]

Checks, for the tokenizer the server runs (SentencePiece or byte-level BPE):
  * completion text = decode(prompt + generated) - decode(prompt) (HF decode, skip_special_tokens), streamed and
    not, for text prompts (leading space of the first token) and token-id prompts ending inside a character;
  * echo + logprobs + max_tokens 0 returns the prompt's tokens as HF encodes the text, special-token text included,
    the first logprob null and the others <= 0, and the text_offsets locate each token's text;
  * n > 1: choice j is what n=1 with seed + j gives (the samples share the prompt, not their randomness);
  * `oar predict`'s output for the same prompt: the same ids as the server's greedy ones, and the same text rule.
The generated ids come back through vLLM's return_tokens_as_token_ids ("token_id:N").
"""
import json
import sys
import urllib.error
import urllib.request

from gpt2_bytes import BYTE_DECODER  # beside this script

from tokenizers import Tokenizer

URL, MODEL, TOK_JSON = sys.argv[1], sys.argv[2], sys.argv[3]
hf = Tokenizer.from_file(TOK_JSON)
FFFD = "\ufffd"


def post(path, body):
    req = urllib.request.Request(URL + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def completion(body):
    status, text = post("/v1/completions", dict(body, model=MODEL))
    assert status == 200, (status, text, body)
    return json.loads(text)


def stream(body):
    status, text = post("/v1/completions", dict(body, model=MODEL, stream=True))
    assert status == 200, (status, text)
    parts = {}
    for line in text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:])["choices"]:
                parts.setdefault(c["index"], []).append(c["text"])
    return ["".join(parts[i]) for i in sorted(parts)]


def ids_of(logprobs):
    return [int(t.split(":")[1]) for t in logprobs["tokens"]]


def decode(ids):
    return hf.decode(ids, skip_special_tokens=True)


# Where the bytes are not valid UTF-8 the libraries differ: HF's SentencePiece decoder (ByteFallback) turns a whole
# run of byte tokens into one U+FFFD per byte, printable ones included; oar, like Python's errors="replace" and
# tokenizers' byte-level decoder, writes one U+FFFD per maximal invalid subpart. So texts are checked against the
# tokens' bytes decoded by Python, and that decoding against HF's wherever HF's is valid text.
SPEC = json.load(open(TOK_JSON, encoding="utf-8"))
ID_TO_TOKEN = {v: k for k, v in SPEC["model"]["vocab"].items()}
ID_TO_TOKEN.update({t["id"]: t["content"] for t in SPEC["added_tokens"]})
SPECIAL_IDS = {t["id"] for t in SPEC["added_tokens"] if t["special"]}
BYTE_LEVEL = "ByteLevel" in json.dumps(SPEC["decoder"])



def token_bytes(i):
    t = ID_TO_TOKEN[i]
    if BYTE_LEVEL:
        return bytes(BYTE_DECODER[c] for c in t)
    if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
        return bytes([int(t[3:5], 16)])
    return t.replace("\u2581", " ").encode()


def py_decode(ids):
    b = b"".join(token_bytes(i) for i in ids if i not in SPECIAL_IDS)
    if not BYTE_LEVEL and b.startswith(b" "):
        b = b[1:]  # the dummy prefix's space (HF's Strip decoder)
    text = b.decode("utf-8", errors="replace")
    hf_text = decode(ids)
    assert FFFD in hf_text or text == hf_text, (ids, text, hf_text)
    return text


def continuation(prompt, gen):
    full, p = py_decode(prompt + gen), py_decode(prompt)
    n = 0
    while n < min(len(full), len(p)) and full[n] == p[n]:
        n += 1
    return full[n:]


checked = {"texts": 0, "valid_utf8": 0, "leading_space": 0}


def check_text(prompt_ids, gen_ids, got, what):
    want = continuation(prompt_ids, gen_ids)
    assert got == want, (what, prompt_ids, gen_ids, got, want)
    checked["texts"] += 1
    checked["valid_utf8"] += FFFD not in decode(prompt_ids + gen_ids)
    checked["leading_space"] += want.startswith(" ") and len(decode(prompt_ids)) > 0


TEXT_PROMPTS = ["Once", "Once upon a time", "Hello world", "你好", "The 🦙", "café", "x=1;"]
for k, text in enumerate(TEXT_PROMPTS):
    prompt_ids = hf.encode(text).ids
    for seed in range(4):
        body = {"prompt": text, "max_tokens": 10, "temperature": 1.0, "seed": 1000 * k + seed, "logprobs": 0,
                "return_tokens_as_token_ids": True, "ignore_eos": True}
        j = completion(body)
        c = j["choices"][0]
        gen = ids_of(c["logprobs"])
        assert len(gen) == 10 and j["usage"]["prompt_tokens"] == len(prompt_ids), (j, prompt_ids)
        check_text(prompt_ids, gen, c["text"], text)
        assert stream(body) == [c["text"]], (stream(body), c["text"])
        # The same prompt given as ids: the same completion.
        j2 = completion(dict(body, prompt=prompt_ids))
        assert j2["choices"][0]["text"] == c["text"]

# Token-id prompts that end inside a character: the rest of that character is the completion's.
for text in ["你好世界", "🦙🦙", "naïve"]:
    ids = hf.encode(text).ids
    for cut in range(2, len(ids)):
        prompt_ids = ids[:cut]
        body = {"prompt": prompt_ids, "max_tokens": 6, "temperature": 1.0, "seed": cut, "logprobs": 0,
                "return_tokens_as_token_ids": True, "ignore_eos": True}
        c = completion(body)["choices"][0]
        check_text(prompt_ids, ids_of(c["logprobs"]), c["text"], text)
        assert stream(body) == [c["text"]]

# echo + logprobs + max_tokens 0 (lm-evaluation-harness's loglikelihood request): the prompt's own tokens.
SPECIAL_TEXTS = ["<s>Hello</s> x", "a <unk> b", "<|begin_of_text|>Hi<|eot_id|>", "plain words here"]
for text in SPECIAL_TEXTS:
    want_ids = hf.encode(text).ids
    j = completion({"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 2, "return_tokens_as_token_ids": True})
    c = j["choices"][0]
    assert ids_of(c["logprobs"]) == want_ids, (text, ids_of(c["logprobs"]), want_ids)
    lps = c["logprobs"]["token_logprobs"]
    assert lps[0] is None and all(v <= 0 for v in lps[1:]), lps
    assert c["logprobs"]["top_logprobs"][0] is None and all(len(t) == 2 for t in c["logprobs"]["top_logprobs"][1:])
    assert c["text"] == decode(want_ids) and j["usage"]["completion_tokens"] == 0, (c["text"], decode(want_ids))
    offs = c["logprobs"]["text_offset"]
    for i in range(len(want_ids)):  # text_offset: where each token's text starts in the returned text
        assert c["text"][offs[i]:] == continuation(want_ids[:i], want_ids[i:]), (text, i, offs)
    # The top logprob is at least the chosen token's (lm-eval's is_greedy test relies on it).
    for v, top in zip(lps[1:], c["logprobs"]["top_logprobs"][1:]):
        assert max(top.values()) >= v - 1e-6

# n > 1: choice j equals the single request with seed + j.
body = {"prompt": "Once upon", "max_tokens": 8, "temperature": 1.0, "seed": 77, "ignore_eos": True}
many = completion(dict(body, n=3))["choices"]
assert [c["index"] for c in many] == [0, 1, 2]
for j in range(3):
    alone = completion(dict(body, seed=77 + j))["choices"][0]["text"]
    assert many[j]["text"] == alone, (j, many[j]["text"], alone)
assert len(set(c["text"] for c in many)) > 1, "the samples must differ"
assert stream(dict(body, n=3)) == [c["text"] for c in many]

# oar predict on the same prompt (greedy): the same ids as the server's, and the same text rule.
if len(sys.argv) > 5:
    with open(sys.argv[4], encoding="utf-8") as f:
        out = json.loads(f.readline())
    prompt, max_length = sys.argv[5], int(sys.argv[6])
    prompt_ids = hf.encode(prompt).ids
    c = completion({"prompt": prompt_ids, "max_tokens": max_length, "temperature": 0, "logprobs": 0,
                    "return_tokens_as_token_ids": True})["choices"][0]
    got = ids_of(c["logprobs"])
    assert got[:len(out["output_ids"])] == out["output_ids"] and len(got) - len(out["output_ids"]) <= 1, \
        ("predict encoded the prompt differently", out, got)
    assert out["output"] == c["text"] == continuation(prompt_ids, out["output_ids"]), (out["output"], c["text"])

assert checked["leading_space"] > 0 and checked["valid_utf8"] >= 3, checked
print("serve_api_check: OK", checked)
