"""The BPE tokenizer: trained with rustbpe, used through tiktoken, with token byte lengths for bits per byte.

Saved per data source in <workdir>/tokenizer/: tokenizer.pkl (a tiktoken Encoding) and token_bytes.npy
(int32, the UTF-8 byte length of every token; 0 for the special tokens, which evaluation masks out).
"""

import hashlib
import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.data import get_source
from common.errors import ContractError
from common.platform import VOCAB_SIZE

# GPT-4's split pattern with numbers grouped by at most two digits, as upstream.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]


def tokenizer_dir(source):
    return source.workdir / "tokenizer"


def train_tokenizer(source, vocab_size=VOCAB_SIZE, max_chars=1_000_000_000, doc_cap=10_000, progress=print):
    """Train the BPE on the source's training split (at most max_chars, each document cut at doc_cap
    characters, as upstream) and save it. Returns the Tokenizer."""
    import rustbpe
    import tiktoken

    def texts():
        seen = 0
        for docs in source.documents("train"):
            for doc in docs:
                doc = doc[:doc_cap]
                seen += len(doc)
                yield doc
                if seen >= max_chars:
                    return

    if not any(docs for docs in source.documents("train")):
        raise ContractError(
            f"The training split of {source.name} holds no documents "
            f"({', '.join(f.name for f in source.train_files)}). Put text in those files, or point DATA= at a "
            "folder that has some.")
    t0 = time.time()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts(), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    enc = tiktoken.Encoding(
        name="rustbpe",
        pat_str=bpe.get_pattern(),
        mergeable_ranks=ranks,
        special_tokens={name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)},
    )
    if enc.n_vocab != vocab_size:
        raise ContractError(
            f"The training split of {source.name} is too small to learn a {vocab_size}-token BPE (it gave "
            f"{enc.n_vocab} tokens). Add more text (a few MB is plenty) or point DATA= at a larger folder.")
    special = set(enc.special_tokens_set)
    token_bytes = np.array([0 if enc.decode([i]) in special else len(enc.decode_single_token_bytes(i))
                            for i in range(enc.n_vocab)], dtype=np.int32)

    out = tokenizer_dir(source)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tokenizer.pkl.tmp"
    tmp.write_bytes(pickle.dumps(enc))
    np.save(out / "token_bytes.npy", token_bytes)
    tmp.replace(out / "tokenizer.pkl")          # last, so a present tokenizer.pkl means a complete save
    tok = Tokenizer.load(source)
    sample = "Hello world! Numbers: 123. Unicode: 你好"
    assert tok.decode(tok.encode(sample)) == sample
    progress(f"Tokenizer: trained {enc.n_vocab} tokens in {time.time() - t0:.1f}s, saved to {out}")
    return tok


class Tokenizer:
    def __init__(self, enc, token_bytes, fingerprint=None):
        self.enc = enc
        # SHA-1 of the saved encoding: it keys the caches built with this tokenizer
        self.fingerprint = fingerprint or hashlib.sha1(pickle.dumps(enc)).hexdigest()
        self.token_bytes = token_bytes
        self.vocab_size = enc.n_vocab
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def load(cls, source=None):
        source = source or get_source()
        folder = tokenizer_dir(source)
        try:
            blob = (folder / "tokenizer.pkl").read_bytes()
            token_bytes = np.load(folder / "token_bytes.npy")
        except FileNotFoundError:
            raise ContractError(
                f"No tokenizer for this data ({source.name}) in {folder}. Run `make prepare` with the same DATA= "
                "(or AUTORESEARCH_DATA) as the training run: it trains the tokenizer once.") from None
        return cls(pickle.loads(blob), token_bytes, hashlib.sha1(blob).hexdigest())

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=8):
        """Token lists for many documents, each starting with BOS."""
        bos = self.bos_token_id
        return [[bos] + ids for ids in self.enc.encode_ordinary_batch(texts, num_threads=num_threads)]

    def encode_arrays(self, texts, num_threads=8):
        """encode_batch's tokens as int32 numpy arrays, for the loader. tiktoken's encode_to_numpy writes each
        encoding into a buffer, where encode_batch makes a Python int per token and the loader then copied them
        into arrays: make_loader ran 16 % faster on 2 cores (docs/notes/common.md). With no special tokens
        allowed it encodes as encode_ordinary does."""
        def encode(text):
            ids = self.enc.encode_to_numpy(text, disallowed_special=())
            doc = np.empty(len(ids) + 1, dtype=np.int32)
            doc[0], doc[1:] = self.bos_token_id, ids
            return doc
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(encode, texts))

    def decode(self, ids):
        return self.enc.decode(list(ids))
