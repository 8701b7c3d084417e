#!/usr/bin/env python3
"""Builds the expectations of the API-semantics tests with Hugging Face transformers / tokenizers.

    python tests/reference/make_api_fixtures.py      (transformers 4.46.3, tokenizers 0.20.3, sentencepiece,
                                                      protobuf; no torch)
Writes tests/fixtures/tokenizers/
  spm_hf/tokenizer.json        the spm fixture (spm/tokenizer.model) converted by LlamaTokenizerFast (legacy, as
                               Llama-2's own tokenizer.json), so that tests decode with `tokenizers` alone
  api_expected.json            for the spm and bpe fixture tokenizers:
    "detok":    prompt ids, generated ids and the completion text, which is
                decode(prompt + generated) minus decode(prompt) (HF decode, skip_special_tokens=True, see
                bytes_decode for prompts ending inside a character): the text after the longest common prefix
                of the two decodings (they differ only where the prompt ends inside a multi-byte character).
                Prompt/continuation splits at every token of varied texts (multi-byte characters split across
                byte-fallback / byte-level tokens included).
    "specials": ids of text spelling out special tokens, tokenizer(text, add_special_tokens=False|True)
                (HF's default split_special_tokens=False), and the texts of those tokens as the OpenAI logprobs
                name them.
    "chat":     apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=True) for messages whose
                content spells special tokens.
"""
import json
import os
import sys

from tokenizers import Tokenizer
from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

from gpt2_bytes import BYTE_DECODER  # beside this script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = os.path.join(REPO, "tests", "fixtures", "tokenizers")

TEXTS = [
    "Once upon a time", "Once", " leading space", "Hello world", "The quick brown fox jumps over the lazy dog.",
    "你好，世界！", "类型#裙*颜色#蓝色", "🦙 llama", "Hello 😀 world", "emoji🦙🦙🦙llama 🎉🎉", "café naïve résumé",
    "Привет мир", "こんにちは", "mixed 中文 and English 123 ok", "line1\nline2", "a  b", "x=10+25*3; y = x ** 2",
    "👨\u200d👩\u200d👧 family", "Don't stop believin'!",
]
SPECIAL_TEXTS = {
    "spm": ["<s>Hello", "Hello</s>", "a <unk> b", "<s> </s>", "x<s>y</s>z", "<s><s>", "Hi <s> there </s> again",
            "no specials here", "<s", "</s>", "<unk>"],
    "bpe": ["<|begin_of_text|>Hi there<|end_of_text|>", "Hello<|eot_id|>world", "<|eot_id|>", "<|eot_id",
            "a <|eot_id|> b", "<s>Hello</s>", "no specials here"],
}
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '[' + message['role'] + '] ' + message['content'] "
                 "+ eos_token }}{% endfor %}")
CHAT_MESSAGES = [
    [{"role": "user", "content": "Hello <s> there"}, {"role": "assistant", "content": "ok</s>"}],
    [{"role": "user", "content": "plain text"}],
]


def common_prefix_len(a, b):
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n



def bytes_decode(hf, ids):
    """HF's decoding, computed from the tokens' bytes with Python's errors="replace" (one U+FFFD per maximal
    invalid subpart). It equals hf.decode wherever that is valid text (asserted); where the bytes are not valid
    UTF-8, HF's SentencePiece decoder (ByteFallback) differs: it makes a whole run of byte tokens one U+FFFD per
    byte, so a prompt ending inside a character would lose the character's earlier, complete neighbours too."""
    spm = isinstance(hf, LlamaTokenizerFast)
    out = b""
    for i, t in zip(ids, hf.convert_ids_to_tokens(ids)):
        if i in hf.all_special_ids:
            continue
        if spm:
            out += bytes([int(t[3:5], 16)]) if len(t) == 6 and t.startswith("<0x") else t.replace("\u2581", " ").encode()
        else:
            out += bytes(BYTE_DECODER[c] for c in t)
    if spm and out.startswith(b" "):
        out = out[1:]  # the dummy prefix (HF's Strip decoder)
    text = out.decode("utf-8", errors="replace")
    ref = hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "\ufffd" in ref or text == ref, (ids, text, ref)
    return text


def detok_cases(hf):
    cases = []
    for text in TEXTS:
        ids = hf(text, add_special_tokens=True)["input_ids"]
        for k in range(1, len(ids)):
            prompt, gen = ids[:k], ids[k:]
            full, p = bytes_decode(hf, ids), bytes_decode(hf, prompt)
            cases.append({"prompt": prompt, "generated": gen, "completion": full[common_prefix_len(full, p):]})
    return cases


def token_texts(hf, ids):
    """A token's text as oar's logprobs name it: its bytes (specials by their text)."""
    out = []
    for t in hf.convert_ids_to_tokens(ids):
        if t.startswith("<0x") and len(t) == 6:
            b = bytes([int(t[3:5], 16)])
            out.append(b.decode() if b[0] < 0x80 else "bytes:\\x%02x" % b[0])
        elif isinstance(hf, LlamaTokenizerFast):
            out.append(t.replace("\u2581", " "))
        else:  # byte-level BPE: un-map GPT-2's printable bytes
            out.append(hf.convert_tokens_to_string([t]) if t not in hf.all_special_tokens else t)
    return out


def special_cases(hf, kind):
    out = []
    for text in SPECIAL_TEXTS[kind]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        out.append({"text": text, "ids": ids, "ids_bos": hf(text, add_special_tokens=True)["input_ids"],
                    "token_texts": token_texts(hf, hf(text, add_special_tokens=True)["input_ids"])})
    return out


def chat_cases(hf):
    return [{"messages": m, "ids": hf.apply_chat_template(m, chat_template=CHAT_TEMPLATE, tokenize=True)}
            for m in CHAT_MESSAGES]


def main():
    # add_prefix_space=True explicitly: left at None the converter drops the dummy prefix (and its Strip decoder),
    # unlike the tokenizer.json of Llama-2 itself (Prepend("\u2581") + Replace, decoder with Strip).
    spm = LlamaTokenizerFast(vocab_file=os.path.join(TOK, "spm", "tokenizer.model"), legacy=True, add_prefix_space=True,
                             add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False)
    out_dir = os.path.join(TOK, "spm_hf")
    os.makedirs(out_dir, exist_ok=True)
    spm.backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    # The saved file gives the same ids as the converted tokenizer, and both the ids of sentencepiece itself.
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(TOK, "spm", "tokenizer.model"))
    again = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    for text in TEXTS:
        assert again.encode(text).ids == spm(text)["input_ids"] == [1] + sp.encode(text), text

    bpe = PreTrainedTokenizerFast.from_pretrained(os.path.join(TOK, "bpe"))
    import tokenizers
    import transformers
    data = {"generator": "transformers %s, tokenizers %s: tests/reference/make_api_fixtures.py"
                         % (transformers.__version__, tokenizers.__version__),
            "chat_template": CHAT_TEMPLATE}
    for kind, hf in (("spm", spm), ("bpe", bpe)):
        data[kind] = {"detok": detok_cases(hf), "specials": special_cases(hf, kind), "chat": chat_cases(hf)}
    path = os.path.join(TOK, "api_expected.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes;", sum(len(data[k]["detok"]) for k in ("spm", "bpe")),
          "detok cases")


if __name__ == "__main__":
    sys.exit(main())
