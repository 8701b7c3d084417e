#!/usr/bin/env python3
"""Builds the tokenizer test fixtures in tests/fixtures/tokenizers/ with the reference libraries.

Run with the reference venv (tokenizers 0.20.3, sentencepiece 0.1.97, transformers 4.46.3):
    /work/venv-ref/bin/python tests/reference/make_tokenizer_fixtures.py

Writes
  spm/tokenizer.model, spm/expected.json            a small SentencePiece BPE (byte_fallback) and its ids
  bpe/tokenizer.json, bpe/tokenizer_config.json,    a small Llama-3-style byte-level BPE (Split regex + ByteLevel,
  bpe/special_tokens_map.json, bpe/expected.json    ignore_merges, <|begin_of_text|> template) and its ids
  bpe_gpt2/tokenizer.json, bpe_gpt2/expected.json   a small GPT-2-style one (ByteLevel with its own regex and
                                                    add_prefix_space, added tokens with lstrip/rstrip/single_word)
  shared_expected.json                              ids of the same texts for the real Llama-3 tokenizer.json and
                                                    Llama-2 tokenizer.model in ../shared/data (only when present;
                                                    ids only, the tokenizer files are never copied here)
The training text is generated here from a fixed seed, so the outputs do not depend on the machine.
"""
import io
import json
import os
import random
import sys

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizers")
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
                 " + message['content'] + '<|eot_id|>' }}{% endfor %}")

# Texts whose ids the C++ tests compare against. Keep them varied: every one exercises a different rule.
TEST_TEXTS = [
    "Hello world",
    "Once upon a time, there was a little girl named Lily.",
    "The quick brown fox jumps over the lazy dog.",
    "I'll", "DON'T", "they're we've I'm he'd she's It'S", "'s'S'll",
    "类型#裙*颜色#蓝色",
    "类型#上衣*材质#牛仔布*颜色#白色*风格#简约",
    "你好，世界！",
    "🦙", "Hello 😀 world", "👨\u200d👩\u200d👧", "emoji🦙🦙🦙llama 🎉🎉",
    "12345678901234567890", "3.14159", "2024-01-01 and 1,000,000",
    "   leading spaces", "trailing space ", "double  space", " ", "  ", "",
    "\n", "line1\nline2", "a\r\nb", "a\n\n\nb", " \n \n", "\ttabs\t\tin\t text", "\t\t",
    "mixed 中文 and English 123 ok", "Привет мир", "café naïve résumé", "こんにちは", "안녕하세요", "مرحبا",
    "a\u00a0b\u3000c\u2028d", "\u0085x", "x\u180ey",
    "<|eot_id|>", "Hello<|eot_id|>world", "<|begin_of_text|>Hi there<|end_of_text|>", "<|eot_id",
    "x=10+25*3; y = x ** 2", "def f(a, b):\n    return a + b\n",
    "Don't stop believin'! We'll see...",
]

WORDS = ("the of and to a in is it you that he was for on are with as I his they be at one have this from or "
         "had by word but what some we can out other were all there when up use your how said an each she which "
         "do their time if will way about many then them write would like so these her long make thing see him "
         "two has look more day could go come did number sound no most people my over know water than call first "
         "who may down side been now find any new work part take get place made live where after back little "
         "only round man year came show every good me give our under name very through just form sentence great "
         "think say help low line differ turn cause much mean before move right boy old too same tell does set "
         "three want air well also play small end put home read hand port large spell add even land here must big "
         "high such follow act why ask men change went light kind off need house picture try us again animal "
         "point mother world near build self earth father head stand own page should country found answer school "
         "grow study still learn plant cover food sun four between state keep eye never last let thought city tree "
         "cross farm hard start might story saw far sea draw left late run while press close night real life few "
         "north open seem together next white children begin got walk example ease paper group always music those "
         "both mark often letter until mile river car feet care second book carry took science eat room friend "
         "began idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl "
         "usual young ready above ever red list though feel talk bird soon body dog family direct pose leave song "
         "measure door product black short numeral class wind question happen complete ship area half rock order "
         "fire south problem piece told knew pass since top whole king space heard best hour better true during "
         "hundred five remember step early hold west ground interest reach fast verb sing listen six table travel "
         "less morning ten simple several vowel toward war lay against pattern slow center love person money serve "
         "appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry "
         "dark machine note wait plan figure star box noun field rest correct able pound done beauty drive stood "
         "contain front teach week final gave green oh quick develop ocean warm free minute strong special mind "
         "behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object "
         "decide surface deep moon island foot system busy test record boat common gold possible plane stead dry "
         "wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant "
         "fill east paint language among Lily Tom Ben Anna Sue Max").split()
CONTRACTIONS = ["I'll", "don't", "DON'T", "we're", "they've", "I'm", "he'd", "she's", "it's", "can't", "won't",
                "You'll", "We'd", "THEY'RE", "Isn't"]
CHINESE = ["类型", "裙", "颜色", "蓝色", "白色", "上衣", "材质", "牛仔布", "风格", "简约", "图案", "刺绣", "裤", "版型",
           "宽松", "你好", "世界", "今天", "天气", "很好", "我们", "学习", "中文", "模型", "数据"]
EMOJI = ["😀", "🦙", "🎉", "👍", "❤️", "🔥", "🌍", "👨\u200d👩\u200d👧", "✨", "🐍"]


def training_lines(seed=1234, n=6000):
    """Deterministic mixed-language text: English sentences with contractions and numbers, AdvertiseGen-style
    Chinese attribute strings, emoji, code-ish lines, tabs, and CRLF line ends."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.55:
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
            if rng.random() < 0.4:
                words.insert(rng.randrange(len(words)), rng.choice(CONTRACTIONS))
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), str(rng.randint(0, 10 ** rng.randint(1, 7))))
            s = " ".join(words)
            s = s[0].upper() + s[1:] + rng.choice([".", ".", "!", "?", ",", "..."])
        elif kind < 0.75:
            s = "*".join(f"{rng.choice(CHINESE)}#{rng.choice(CHINESE)}" for _ in range(rng.randint(1, 5)))
            if rng.random() < 0.5:
                s += "，" + "".join(rng.choice(CHINESE) for _ in range(rng.randint(2, 8))) + "。"
        elif kind < 0.85:
            s = " ".join(rng.choice(WORDS + EMOJI + EMOJI) for _ in range(rng.randint(2, 8)))
        elif kind < 0.93:
            a, b = rng.choice(WORDS), rng.choice(WORDS)
            s = rng.choice([f"def {a}({b}):\n    return {b} + {rng.randint(0, 99)}",
                            f"{a} = [{rng.randint(0, 9)}, {rng.randint(10, 999)}]",
                            f"\t{a}\t{b}\t{rng.randint(0, 9999)}",
                            f"if ({a} == {b}) {{ {a}++; }}"])
        else:
            s = "  ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        if rng.random() < 0.05:
            s += "\r"
        lines.append(s)
    return lines


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def make_spm(lines):
    d = os.path.join(OUT, "spm")
    os.makedirs(d, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=700,
        byte_fallback=True, character_coverage=0.9995, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    path = os.path.join(d, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=path)
    cases = []
    for t in TEST_TEXTS:
        ids = sp.encode(t)
        cases.append({"text": t, "ids": ids, "ids_bos": [sp.bos_id()] + ids,
                      "pieces": [sp.id_to_piece(i) for i in ids], "decoded": sp.decode(ids)})
    write_json(os.path.join(d, "expected.json"), {
        "generator": "sentencepiece %s: SentencePieceProcessor.encode(text) (no BOS); ids_bos = [bos_id] + ids; "
                     "decoded = decode(ids)" % spm.__version__,
        "vocab_size": sp.get_piece_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "cases": cases})


def bpe_cases(tok):
    cases = []
    for t in TEST_TEXTS:
        enc = tok.encode(t, add_special_tokens=False)
        cases.append({"text": t, "ids": enc.ids, "ids_bos": tok.encode(t, add_special_tokens=True).ids,
                      "tokens": enc.tokens, "decoded": tok.decode(enc.ids, skip_special_tokens=True)})
    return cases


def make_bpe(lines):
    d = os.path.join(OUT, "bpe")
    os.makedirs(d, exist_ok=True)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    # Through transformers, so that tokenizer_config.json / special_tokens_map.json look like a model's.
    # eos_token is <|eot_id|> as in Llama-3-Instruct, to exercise the configured-EOS path.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(d)
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["model"]["ignore_merges"] is True
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    write_json(os.path.join(d, "expected.json"), {
        "generator": "tokenizers %s: Tokenizer.encode(text, add_special_tokens=False|True).ids; "
                     "decoded = decode(ids, skip_special_tokens=True)" % __import__("tokenizers").__version__,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True), "bos_id": bos,
        "eos_ids": [tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|end_of_text|>")],
        "cases": bpe_cases(tok)})


def make_bpe_gpt2(lines):
    """GPT-2 style: ByteLevel does the splitting (its own regex) and adds a prefix space; no template; added
    tokens with the lstrip / rstrip / single_word options, one of them not special (so decode keeps it)."""
    d = os.path.join(OUT, "bpe_gpt2")
    os.makedirs(d, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines[:3000], trainer=trainer)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False)])
    tok.add_tokens([AddedToken("lama", single_word=True, special=False, normalized=False),
                    AddedToken("[sep]", rstrip=True, special=False, normalized=False)])
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    path = os.path.join(d, "tokenizer.json")
    tok.save(path)
    tok = Tokenizer.from_file(path)
    texts = TEST_TEXTS + ["I saw a <mask> there", "a   <mask>b", "lama llama lama. alama", "x [sep]   y", "lama",
                          "<mask><mask> lama[sep]lama"]
    cases = []
    for t in texts:
        enc = tok.encode(t, add_special_tokens=False)
        cases.append({"text": t, "ids": enc.ids, "ids_bos": enc.ids, "tokens": enc.tokens,
                      "decoded": tok.decode(enc.ids, skip_special_tokens=True)})
    write_json(os.path.join(d, "expected.json"), {
        "generator": "tokenizers %s: Tokenizer.encode(text, add_special_tokens=False).ids (no BOS template); "
                     "decoded = decode(ids, skip_special_tokens=True)" % __import__("tokenizers").__version__,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True), "bos_id": -1,
        "eos_ids": [tok.token_to_id("<|endoftext|>")], "cases": cases})


def fnv1a64(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for byte in i.to_bytes(4, "little"):
            h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def make_shared_expected():
    """Ids for the real tokenizers in ../shared/data. Only ids and decoded text are stored here."""
    l3_dir = os.path.join(SHARED, "llama3_tokenizer")
    l2_path = os.path.join(SHARED, "llama2_tokenizer", "tokenizer.model")
    if not (os.path.isdir(l3_dir) and os.path.isfile(l2_path)):
        print("shared data not found at %s: shared_expected.json not written" % SHARED)
        return
    l3 = Tokenizer.from_file(os.path.join(l3_dir, "tokenizer.json"))
    l2 = spm.SentencePieceProcessor(model_file=l2_path)
    out = {"generator": "tokenizers %s on llama3_tokenizer/tokenizer.json (add_special_tokens=False); "
                        "sentencepiece %s on llama2_tokenizer/tokenizer.model (encode(text), no BOS)"
                        % (__import__("tokenizers").__version__, spm.__version__),
           "llama3": [], "llama2": []}
    for t in TEST_TEXTS:
        ids = l3.encode(t, add_special_tokens=False).ids
        out["llama3"].append({"text": t, "ids": ids, "decoded": l3.decode(ids, skip_special_tokens=True)})
        ids = l2.encode(t)
        out["llama2"].append({"text": t, "ids": ids, "decoded": l2.decode(ids)})
    shakespeare = os.path.join(SHARED, "text", "tinyshakespeare", "input.txt")
    if os.path.isfile(shakespeare):
        with open(shakespeare, encoding="utf-8") as f:
            ids = l3.encode(f.read(), add_special_tokens=False).ids
        # The whole id list is too big for a fixture: its length and a 64-bit FNV-1a hash of the ids written as
        # little-endian int32 (simple enough to recompute in the C++ test).
        out["llama3_tinyshakespeare"] = {"count": len(ids), "fnv1a64_int32le": "%016x" % fnv1a64(ids),
                                         "first": ids[:32]}
    write_json(os.path.join(OUT, "shared_expected.json"), out)


def main():
    os.makedirs(OUT, exist_ok=True)
    lines = training_lines()
    make_spm(lines)
    make_bpe(lines)
    make_bpe_gpt2(lines)
    make_shared_expected()
    for root, _, files in sorted(os.walk(OUT)):
        for name in sorted(files):
            p = os.path.join(root, name)
            print("%8d  %s" % (os.path.getsize(p), os.path.relpath(p, REPO)))


if __name__ == "__main__":
    sys.exit(main())
