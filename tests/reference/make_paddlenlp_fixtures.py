#!/usr/bin/env python3
"""Builds tests/fixtures/tokenizers/paddlenlp_expected.json: what PaddleNLP's own tokenizer does with the text of
fine-tuning data, for the rules oar's fine-tuning path copies from it.

Run with a venv holding PyPI's paddlenlp 2.8.1 and paddlepaddle 3.0.0 (no GPU needed):
    /work/venv-paddle/bin/python tests/reference/make_paddlenlp_fixtures.py

PaddleNLP's LlamaTokenizer (sentencepiece, a "slow" tokenizer) is loaded on
  spm      tests/fixtures/tokenizers/spm/tokenizer.model (always written)
  llama2   ../shared/data/llama2_tokenizer/tokenizer.model (only when present; ids only, the model is not copied)
and records
  specials    special-token text written in the data ("<unk>", "<s>", "</s>"): the token, and whitespace on both
              sides of it dropped (PretrainedTokenizer.tokenize's default for special tokens), unlike Hugging Face's
              LlamaTokenizerFast; ids without and with special tokens (BOS).
  truncation  llm/utils/data.py's source encoding: tokenizer(src, max_length=src_length, truncation=True,
              truncation_side="left", add_special_tokens=True), and the same without truncation_side: 2.8.1 ignores
              the argument, so both keep the START of the source.
"""
import json
import os
import shutil
import sys
import tempfile

from paddlenlp.transformers import LlamaTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizers")
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")

SPECIAL_TEXTS = [
    "a <unk> b", "a <unk> b <s> c</s>", "<unk>", "x<unk>y", "<s>Hello", "Hello</s>", "<s> </s>", "x<s>y</s>z",
    "<s><s>", "Hi <s> there </s> again", "no specials here", "  leading and trailing  ", "<s", "a\n\n<unk>\t b",
    "a\u3000<unk>\u00a0b", " <s> ", "question: 1+1?</s>\n answer", "tab\t</s>\tend", "<unk><unk> <unk>",
    "multi  spaces  <s>  x  ", "\u4e2d\u6587<unk>\u4e2d\u6587", "a \u2028</s>\u2029 b", "[INST] hi [/INST] ok </s>",
]
LONG_SOURCE = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
               "friends, and every day she found something new to look at.")


def load(model_file):
    d = tempfile.mkdtemp()
    shutil.copy(model_file, os.path.join(d, "sentencepiece.bpe.model"))  # LlamaTokenizer's resource file name
    return LlamaTokenizer.from_pretrained(d)


def cases(tok):
    out = {"specials": [], "truncation": []}
    for s in SPECIAL_TEXTS:
        out["specials"].append({"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"],
                                "ids_bos": tok(s)["input_ids"]})
    full = tok(LONG_SOURCE)["input_ids"]
    for src_length in (1, 2, 5, 9, len(full) - 1, len(full), len(full) + 3):  # 1: the tokenizer gives up, no cut
        left = tok(LONG_SOURCE, max_length=src_length, truncation=True, truncation_side="left",
                   add_special_tokens=True)["input_ids"]
        plain = tok(LONG_SOURCE, max_length=src_length, truncation=True, add_special_tokens=True)["input_ids"]
        assert left == plain, (src_length, left, plain)
        out["truncation"].append({"text": LONG_SOURCE, "src_length": src_length, "src_ids": left})
    return out


def main():
    import paddlenlp
    res = {"generator": "tests/reference/make_paddlenlp_fixtures.py, paddlenlp " + paddlenlp.__version__,
           "spm": cases(load(os.path.join(OUT, "spm", "tokenizer.model")))}
    l2 = os.path.join(SHARED, "llama2_tokenizer", "tokenizer.model")
    if os.path.exists(l2):
        res["llama2"] = cases(load(l2))
    with open(os.path.join(OUT, "paddlenlp_expected.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", os.path.join(OUT, "paddlenlp_expected.json"), "with", ", ".join(k for k in res if k != "generator"))


if __name__ == "__main__":
    sys.exit(main())
