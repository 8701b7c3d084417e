#!/usr/bin/env python3
"""PaddleNLP 2.8.1's step-1 fine-tuning loss per example, for tests/cli/paddle_sft_loss.sh.

Run it with the venv of tests/reference/paddle_venv.sh (paddlepaddle 3.0.0 CPU + paddlenlp 2.8.1):

  paddle_sft_loss.py --tokenizer DIR --fixtures DIR --src_length N --max_length M OUT

DIR (--tokenizer) holds Llama-2's tokenizer.model; DIR (--fixtures) PaddleNLP's train.json / dev.json (src/tgt
JSON-lines). Writes, under OUT:
  model/            a tiny random Llama with Llama-2's 32000-token vocabulary, saved by PaddleNLP
                    (LlamaForCausalLM.save_pretrained, float32), beside Llama-2's tokenizer as PaddleNLP saves it
                    (sentencepiece.bpe.model, tokenizer_config.json, special_tokens_map.json);
  ex_NNN/train.json one example per directory (the fixtures' lines, then a few built here, below);
  losses.json       per example: where it came from, the token counts, whether the source / target were cut,
                    and PaddleNLP's loss: LlamaForCausalLM's forward with labels (LlamaPretrainingCriterion: the
                    mean float32 cross-entropy over the positions whose label is not -100), i.e. what
                    run_finetune.py's trainer logs as the loss of a first step of batch size 1.

Tokenization is PaddleNLP's own LlamaTokenizer, loaded from there as run_finetune.py loads it; the data rule (which ids, which labels) is written out below,
because the PyPI package has no llm/ folder.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paddle_interop import fresh_dir, import_paddle, randomize, tiny_config  # noqa: E402

SEED = 20240611
IGNORE = -100


# ---- the data rule ------------------------------------------------------------------------------------------------
# This mirrors PaddleNLP 2.8.1's llm/utils/data.py for a plain src/tgt example without a chat template
# (tokenize_example, then convert_example_common with is_test=False), as run_finetune.py applies it to train.json.
# Restated here, not copied:
#   * a list-valued src/tgt contributes only its first element;
#   * the source is tokenized with special tokens (BOS for Llama) and cut to src_length tokens, with
#     truncation_side="left" passed as data.py passes it (the released tokenizer ignores it and keeps the START:
#     the call below asks exactly what data.py asks, so the tokenizer itself decides);
#   * the target, without special tokens, is cut to max_length - len(source) tokens from the right;
#   * EOS follows the target only when the target came out shorter than that limit (a target cut to the limit,
#     or one exactly that long, gets none);
#   * labels are -100 over the source and the ids over the target; the shift is done in the data:
#     input_ids = ids[:-1], labels = labels[1:].
def first(value):
    return value[0] if isinstance(value, list) else value


def paddlenlp_example(tokenizer, record, src_length, max_length):
    source, target = first(record["src"]), first(record["tgt"])
    src_ids = tokenizer(source, max_length=src_length, truncation=True, truncation_side="left",
                        add_special_tokens=True)["input_ids"]
    tgt_limit = max_length - len(src_ids)
    tgt_ids = tokenizer(target, max_length=tgt_limit, truncation=True, add_special_tokens=False)["input_ids"]
    eos = len(tgt_ids) < tgt_limit
    if eos:
        tgt_ids = tgt_ids + [tokenizer.eos_token_id]
    ids = src_ids + tgt_ids
    labels = [IGNORE] * len(src_ids) + tgt_ids
    full_src = len(tokenizer(source, add_special_tokens=True)["input_ids"])
    full_tgt = len(tokenizer(target, add_special_tokens=False)["input_ids"])
    info = {
        "source_tokens": full_src,
        "source_cut": full_src > len(src_ids),
        "target_tokens": full_tgt,
        "target_cut": full_tgt > len(tgt_ids) - eos,
        "eos": eos,
    }
    return ids[:-1], labels[1:], info


# ---- the examples -------------------------------------------------------------------------------------------------
def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [(f"{os.path.basename(path)}:{n}", json.loads(line)) for n, line in enumerate(f, 1) if line.strip()]


def words_with_tokens(tokenizer, count):
    """An English text of exactly `count` target tokens (no special tokens): words that are one token each."""
    vocabulary = "the quick brown dog over a lazy cat near river bank".split()
    for n in range(count, 0, -1):
        text = " ".join(vocabulary[i % len(vocabulary)] for i in range(n))
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == count:
            return text
    sys.exit(f"error: no text of exactly {count} tokens")


def built_examples(tokenizer, fixtures, src_length, max_length):
    """Cases the fixtures may not hold: a source far over src_length, special-token text, list-valued turns,
    and targets ending exactly at the limit (no EOS) or one short of it (EOS fills the last place)."""
    srcs = [first(r["src"]) for _, r in fixtures]
    tgts = [first(r["tgt"]) for _, r in fixtures]
    long_src = "Write an advert for these: " + " / ".join(srcs[:4])
    short_src = "广告：连衣裙"
    short_len = len(tokenizer(short_src, add_special_tokens=True)["input_ids"])
    return [
        ("built:long_source", {"src": long_src, "tgt": tgts[0][:40]}),
        ("built:special_text", {"src": "标题 <unk> 裙子 </s> and <s>x", "tgt": "好看 </s> 的 <s> 裙子"}),
        ("built:list_turns", {"src": [srcs[1], "第二轮问题"], "tgt": [tgts[1], "第二轮回答"]}),
        ("built:target_at_limit", {"src": short_src, "tgt": words_with_tokens(tokenizer, max_length - short_len)}),
        ("built:target_one_short", {"src": short_src, "tgt": words_with_tokens(tokenizer, max_length - short_len - 1)}),
    ]


# ---- main ---------------------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--src_length", type=int, required=True)
    ap.add_argument("--max_length", type=int, required=True)
    ap.add_argument("out")
    args = ap.parse_args()

    paddle = import_paddle()
    from paddlenlp.transformers import AutoTokenizer, LlamaForCausalLM, LlamaTokenizer

    # The tokenizer as run_finetune.py gets it: AutoTokenizer.from_pretrained of the model's directory. That path
    # (not LlamaTokenizer's constructor alone) registers <unk>, <s> and </s> as words never split, so their text in
    # an example becomes the special token.
    model_dir = fresh_dir(os.path.join(fresh_dir(args.out), "model"))
    LlamaTokenizer(vocab_file=os.path.join(args.tokenizer, "tokenizer.model")).save_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fixtures = read_jsonl(os.path.join(args.fixtures, "train.json")) + read_jsonl(os.path.join(args.fixtures, "dev.json"))
    examples = fixtures + built_examples(tokenizer, fixtures, args.src_length, args.max_length)

    paddle.seed(SEED)
    config = tiny_config()  # paddle_interop's tiny Llama, with Llama-2's vocabulary and room for max_length
    config.vocab_size = tokenizer.vocab_size
    config.max_position_embeddings = args.max_length
    model = LlamaForCausalLM(config)
    randomize(model, SEED)
    model.eval()
    model.save_pretrained(model_dir)

    results = []
    for i, (where, record) in enumerate(examples):
        input_ids, labels, info = paddlenlp_example(tokenizer, record, args.src_length, args.max_length)
        with paddle.no_grad():
            out = model(
                input_ids=paddle.to_tensor(np.asarray([input_ids], dtype="int64")),
                labels=paddle.to_tensor(np.asarray([labels], dtype="int64")),
                use_cache=False,
                return_dict=True,
            )
        loss = float(out.loss.numpy())
        if not np.isfinite(loss):
            sys.exit(f"error: {where}: PaddleNLP's loss is {loss}")
        name = f"ex_{i:03d}"
        os.makedirs(os.path.join(args.out, name))
        with open(os.path.join(args.out, name, "train.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        results.append(
            {"name": name, "where": where, "input_tokens": len(input_ids),
             "target_positions": sum(label != IGNORE for label in labels), **info, "loss": loss}
        )
    with open(os.path.join(args.out, "losses.json"), "w") as f:
        json.dump({"src_length": args.src_length, "max_length": args.max_length, "examples": results}, f, indent=1)
    cut = sum(r["source_cut"] for r in results)
    print(f"paddle_sft_loss: {len(results)} examples, {cut} with the source cut to src_length {args.src_length}, "
          f"{sum(r['target_cut'] for r in results)} with the target cut, {sum(r['eos'] for r in results)} with EOS")


if __name__ == "__main__":
    main()
