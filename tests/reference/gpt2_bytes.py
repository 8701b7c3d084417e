"""GPT-2's byte-level alphabet, as Hugging Face tokenizers' ByteLevel pre-tokenizer and decoder use it: each byte is
written as one printable character in the vocabulary. Shared by the API fixture generator and the live API check."""


def gpt2_byte_decoder():
    """The map from a vocabulary character back to its byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


BYTE_DECODER = gpt2_byte_decoder()
