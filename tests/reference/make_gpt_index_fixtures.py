#!/usr/bin/env python3
"""Fixtures for oar's pretraining data pipeline, computed with NumPy only (Debian's python3-numpy).

Writes into tests/fixtures/data/:
  gpt_u16.{bin,idx}, gpt_i32.{bin,idx}  small MMIDIDX datasets written here with NumPy (so the C++ reader is checked
                                         against files it did not write)
  gpt_index_cases.json                   GPTDataset doc_idx / sample_idx / shuffle_idx and sample tokens for several
                                         (split, seed, num_samples, seq_length) cases
  numpy_shuffle.json                     RandomState(seed).shuffle(arange(n)) for several n and seeds
  blending.json                          BlendableDataset indices for a few weight sets

The GPTDataset algorithm follows PaddleNLP's paddlenlp/data/causal_dataset.py as described in
../shared/notes/paddlenlp.md section 3.4 (written from that description; no PaddleNLP code is used):
split bounds over sequences with Python round(); epochs until (epochs*tokens - 1) // seq_len >= num_samples;
doc_idx = the split's sequence ids tiled per epoch and shuffled by np.random.RandomState(seed) (the last epoch
shuffled separately when it supplies < 80% of an epoch's samples); sample_idx walking seq_len + 1 tokens with one
token of overlap; shuffle_idx = arange shuffled (the last epoch's samples separately).

Usage: python3 tests/reference/make_gpt_index_fixtures.py [--out tests/fixtures/data]
"""
import argparse
import json
import math
import os

import numpy as np

DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
               np.uint16: 8, np.uint32: 9, np.uint64: 10}


# ---------------------------------------------------------------- the .bin/.idx format

def write_mmidx(prefix, documents, dtype):
    """documents: list of documents, each a list of sequences (lists of token ids)."""
    sizes, doc_idx, chunks = [], [0], []
    for doc in documents:
        for seq in doc:
            sizes.append(len(seq))
            chunks.append(np.asarray(seq, dtype=dtype))
        doc_idx.append(len(sizes))
    data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    with open(prefix + ".bin", "wb") as f:
        f.write(data.tobytes(order="C"))
    itemsize = np.dtype(dtype).itemsize
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64)) * itemsize
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], dtype="<u8").tobytes())
        f.write(np.array([DTYPE_CODES[dtype]], dtype="<u1").tobytes())
        f.write(np.array([len(sizes)], dtype="<u8").tobytes())
        f.write(np.array([len(doc_idx)], dtype="<u8").tobytes())
        f.write(sizes.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.asarray(doc_idx, dtype="<i8").tobytes())
    return sizes, np.asarray(doc_idx, dtype=np.int64), data


# ---------------------------------------------------------------- GPTDataset index construction

def split_bounds(split, size):
    sep = "," if "," in split else "/" if "/" in split else None
    parts = [float(s) for s in split.split(sep)] if sep else [float(split)]
    while len(parts) < 3:
        parts.append(0.0)
    parts = parts[:3]
    total = sum(parts)
    parts = [p / total for p in parts]
    bounds = [0]
    for i, p in enumerate(parts):
        bounds.append(bounds[i] + int(round(p * float(size))))
    diff = bounds[-1] - size
    for i in range(1, len(bounds)):
        bounds[i] -= diff
    return bounds


def epochs_needed(tokens_per_epoch, seq_len, num_samples):
    epochs, total = 0, 0
    while True:
        epochs += 1
        total += tokens_per_epoch
        if (total - 1) // seq_len >= num_samples:
            return epochs


def shuffled_docs(documents, epochs, rng):
    tiled = np.tile(np.asarray(documents, dtype=np.int32), epochs)
    rng.shuffle(tiled)
    return tiled


def build_indices(sizes, begin, end, num_samples, seq_len, seed):
    documents = np.arange(begin, end, dtype=np.int32)
    tokens_per_epoch = int(np.sum(sizes[documents]))
    epochs = epochs_needed(tokens_per_epoch, seq_len, num_samples)
    rng = np.random.RandomState(seed)
    separate = False
    before_last = 0
    if epochs > 1:
        before_last = ((epochs - 1) * tokens_per_epoch - 1) // seq_len
        last_epoch_samples = num_samples - before_last
        per_epoch = (tokens_per_epoch - 1) // seq_len
        separate = last_epoch_samples < int(0.80 * per_epoch)
    if separate:
        doc_idx = np.concatenate([shuffled_docs(documents, epochs - 1, rng), shuffled_docs(documents, 1, rng)])
    else:
        doc_idx = shuffled_docs(documents, epochs, rng)

    n = (epochs * tokens_per_epoch - 1) // seq_len
    sample_idx = np.zeros((n + 1, 2), dtype=np.int64)
    di, offset = 0, 0
    for s in range(1, n + 1):
        need = seq_len + 1
        while need > 0:
            avail = int(sizes[doc_idx[di]]) - offset
            if avail >= need:  # the sample ends inside this document; the next one starts on its last token
                offset += need - 1
                need = 0
            else:
                need -= avail
                di += 1
                offset = 0
        sample_idx[s] = (di, offset)

    first = before_last if separate else n
    dtype = np.uint32 if n < np.iinfo(np.uint32).max - 1 else np.int64
    head = np.arange(0, first, dtype=dtype)
    rng.shuffle(head)
    if first < n:
        tail = np.arange(first, n, dtype=dtype)
        rng.shuffle(tail)
        shuffle_idx = np.concatenate([head, tail])
    else:
        shuffle_idx = head
    return dict(doc_idx=doc_idx, sample_idx=sample_idx, shuffle_idx=shuffle_idx, num_epochs=epochs,
                tokens_per_epoch=tokens_per_epoch, separate_last_epoch=bool(separate))


def sample_tokens(ix, data, pointers_items, sizes, i):
    j = int(ix["shuffle_idx"][i])
    (f, off_f), (l, off_l) = ix["sample_idx"][j], ix["sample_idx"][j + 1]
    doc = ix["doc_idx"]

    def seq(k, start, stop):
        base = pointers_items[doc[k]]
        return data[base + start: base + stop]

    if f == l:
        parts = [seq(f, off_f, off_l + 1)]
    else:
        parts = [seq(f, off_f, sizes[doc[f]])]
        parts += [seq(k, 0, sizes[doc[k]]) for k in range(f + 1, l)]
        parts.append(seq(l, 0, off_l + 1))
    return np.concatenate(parts).astype(np.int64)


def blending_indices(weights, size):
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    taken = np.zeros(len(w), dtype=np.int64)
    ds_index = np.zeros(size, dtype=np.uint8)
    ds_sample = np.zeros(size, dtype=np.int64)
    for s in range(size):
        at = max(float(s), 1.0)
        errors = w * at - taken
        best = int(np.argmax(errors))  # the first maximum, as a strict '>' scan
        ds_index[s] = best
        ds_sample[s] = taken[best]
        taken[best] += 1
    return ds_index, ds_sample


# ---------------------------------------------------------------- fixtures

def make_documents(rng, n_docs, max_sents, max_len, vocab):
    docs = []
    for _ in range(n_docs):
        n_sents = int(rng.randint(1, max_sents + 1))
        docs.append([rng.randint(0, vocab, size=int(rng.randint(1, max_len + 1))).tolist() for _ in range(n_sents)])
    return docs


def checksum(values):
    h = 0
    for i, v in enumerate(values):
        h = (h + (i + 1) * int(v)) % (1 << 64)
    return str(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = np.random.RandomState(20240601)

    datasets = {
        # one sequence per document, uint16 (what `oar preprocess` writes for small vocabularies)
        "gpt_u16": (make_documents(gen, 60, 1, 40, 65535), np.uint16),
        # several sequences per document (PaddleNLP's --split_sentences), int32 ids above 65535
        "gpt_i32": (make_documents(gen, 25, 4, 12, 200000), np.int32),
    }
    loaded = {}
    for name, (docs, dtype) in datasets.items():
        sizes, doc_idx, data = write_mmidx(os.path.join(args.out, name), docs, dtype)
        starts = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            starts[1:] = np.cumsum(sizes[:-1].astype(np.int64))
        loaded[name] = (sizes, doc_idx, data, starts)

    cases = []
    # (dataset, split, [train, valid, test] samples, seq_len, seed): one epoch, several epochs with and without a
    # separate last epoch, long and length-1 samples, the three split syntaxes.
    specs = [
        ("gpt_u16", "949,50,1", [10, 2, 1], 16, 42),
        ("gpt_u16", "949,50,1", [300, 40, 5], 16, 1234),
        ("gpt_u16", "8,1,1", [70, 12, 3], 32, 7),
        ("gpt_u16", "98/2", [50, 5, 0], 100, 0),
        ("gpt_u16", "1", [2500, 0, 0], 3, 4294967295),
        ("gpt_u16", "7,2,1", [1, 1, 1], 1, 99),
        ("gpt_i32", "949,50,1", [40, 4, 2], 8, 42),
        ("gpt_i32", "6,3,1", [200, 30, 30], 5, 2023),
        ("gpt_i32", "1,1,1", [7, 7, 7], 64, 5),
    ]
    for ds, split, nums, seq_len, seed in specs:
        sizes, _, data, starts = loaded[ds]
        bounds = split_bounds(split, len(sizes))
        case = dict(dataset=ds, split=split, num_samples=nums, seq_length=seq_len, seed=seed, bounds=bounds,
                    splits=[])
        for s in range(3):
            if bounds[s + 1] <= bounds[s]:
                case["splits"].append(None)
                continue
            ix = build_indices(sizes, bounds[s], bounds[s + 1], nums[s], seq_len, seed)
            total = len(ix["shuffle_idx"])
            shown = list(range(min(total, 12))) + ([total - 1] if total > 12 else [])
            case["splits"].append(dict(
                num_epochs=ix["num_epochs"], tokens_per_epoch=ix["tokens_per_epoch"],
                separate_last_epoch=ix["separate_last_epoch"], num_samples_total=total,
                doc_idx=ix["doc_idx"].tolist(), sample_idx=ix["sample_idx"].reshape(-1).tolist(),
                shuffle_idx=ix["shuffle_idx"].tolist(),
                samples={str(i): sample_tokens(ix, data, starts, sizes, i).tolist() for i in shown},
                tokens_checksum=checksum(np.concatenate(
                    [sample_tokens(ix, data, starts, sizes, i) for i in range(total)]).tolist())))
        cases.append(case)
    datasets_meta = {name: dict(sizes=l[0].tolist(), doc_idx=l[1].tolist(), dtype=np.dtype(datasets[name][1]).name,
                                tokens_checksum=checksum(l[2].tolist())) for name, l in loaded.items()}
    with open(os.path.join(args.out, "gpt_index_cases.json"), "w") as f:
        json.dump(dict(datasets=datasets_meta, cases=cases), f, separators=(",", ":"))

    shuffles = []
    for seed in [0, 1, 42, 1234, 4294967295]:
        for n in [0, 1, 2, 3, 17, 1000, 65537, 300000]:
            a = np.arange(n, dtype=np.int64)
            np.random.RandomState(seed).shuffle(a)
            shuffles.append(dict(seed=seed, n=n, head=a[:8].tolist(), tail=a[-8:].tolist() if n else [],
                                 checksum=checksum(a.tolist())))
    # Two shuffles from one generator (the state carries over, as doc_idx then shuffle_idx).
    rng = np.random.RandomState(42)
    a, b = np.arange(100, dtype=np.int32), np.arange(37, dtype=np.uint32)
    rng.shuffle(a)
    rng.shuffle(b)
    with open(os.path.join(args.out, "numpy_shuffle.json"), "w") as f:
        json.dump(dict(shuffles=shuffles, sequential=dict(seed=42, first=a.tolist(), second=b.tolist())), f,
                  separators=(",", ":"))

    blends = []
    for weights, size in [([1.0, 1.0], 20), ([0.7, 0.2, 0.1], 50), ([3.0, 1.0], 33), ([0.25, 0.25, 0.5], 17)]:
        di, ds = blending_indices(weights, size)
        blends.append(dict(weights=weights, size=size, dataset_index=di.tolist(), dataset_sample_index=ds.tolist(),
                           per_dataset_samples=[int(math.ceil(100 * w / sum(weights) * 1.005)) + 20
                                                for w in weights]))
    with open(os.path.join(args.out, "blending.json"), "w") as f:
        json.dump(dict(blends=blends), f, separators=(",", ":"))


if __name__ == "__main__":
    main()
