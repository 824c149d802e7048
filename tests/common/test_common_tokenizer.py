"""The tokenizer: 8192 tokens, BOS first of 4 specials, exact round trips, exact byte lengths."""

import numpy as np
import pytest

from common.errors import ContractError
from common.tokenizer import SPECIAL_TOKENS, Tokenizer, tokenizer_dir

# upstream autoresearch / nanochat: GPT-4's pattern with numbers split into groups of at most two digits
UPSTREAM_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

UNICODE_SAMPLES = [
    "Hello world! Numbers: 123456789. Unicode: 你好, 日本語, Ελληνικά, Русский, العربية, עברית",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and combining e\u0301 vs \u00e9",
    "tabs\tand\r\nwindows line ends\n\n\nand   runs   of   spaces  ",
    "zero width\u200bspace, nbsp\u00a0here, BOM \ufeff, replacement \ufffd, null \x00 byte",
    "math ∑∫√∞ ≠ ≤ ≥, currency €£¥₹, quotes “”‘’ «»",
    "",
    " ",
]


def test_vocab_is_8192_with_four_specials_and_bos_first(corpus_tokenizer):
    tok = corpus_tokenizer
    assert tok.vocab_size == 8192
    specials = [tok.enc.encode_single_token(s) for s in SPECIAL_TOKENS]
    assert specials == [8188, 8189, 8190, 8191]
    assert tok.bos_token_id == 8188 == specials[0]


def test_split_pattern_is_upstreams(corpus_tokenizer):
    assert corpus_tokenizer.enc._pat_str == UPSTREAM_SPLIT_PATTERN


def test_round_trips_real_corpus_text(corpus_tokenizer, real_docs):
    tok = corpus_tokenizer
    for doc in real_docs[:200]:
        assert tok.decode(tok.encode(doc)) == doc


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_round_trips_unicode(corpus_tokenizer, text):
    assert corpus_tokenizer.decode(corpus_tokenizer.encode(text)) == text


def test_token_bytes_are_utf8_lengths_and_zero_for_specials(corpus_tokenizer):
    tok = corpus_tokenizer
    tb = tok.token_bytes
    assert isinstance(tb, np.ndarray) and tb.shape == (8192,) and tb.dtype == np.int32
    expected = [len(tok.enc.decode_single_token_bytes(i)) for i in range(8188)] + [0, 0, 0, 0]
    assert tb.tolist() == expected
    assert (tb[:8188] >= 1).all()
    assert (tb[:256] == 1).all()            # the 256 byte tokens come first


def test_token_bytes_of_an_encoding_sum_to_the_texts_utf8_length(corpus_tokenizer, real_docs):
    tok = corpus_tokenizer
    for text in real_docs[:50] + UNICODE_SAMPLES:
        assert int(tok.token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_special_token_text_in_a_document_is_ordinary_text(corpus_tokenizer):
    tok = corpus_tokenizer
    ids = tok.encode("a document that mentions <|reserved_0|> literally")
    assert all(i < 8188 for i in ids)


def test_encode_batch_prepends_bos_to_each_document(corpus_tokenizer, real_docs):
    tok = corpus_tokenizer
    docs = real_docs[:20] + [""]
    assert tok.encode_batch(docs) == [[8188] + tok.encode(d) for d in docs]


def test_encode_arrays_are_encode_batchs_tokens_as_int32_arrays(corpus_tokenizer, real_docs):
    tok = corpus_tokenizer
    docs = real_docs[:200] + UNICODE_SAMPLES + ["", "a document that mentions <|reserved_0|> literally"]
    arrays = tok.encode_arrays(docs)
    assert all(a.dtype == np.int32 and a.ndim == 1 for a in arrays)
    assert [a.tolist() for a in arrays] == tok.encode_batch(docs)


def test_saved_tokenizer_loads_to_the_same_encoding(prepared_corpus, corpus_tokenizer):
    folder = tokenizer_dir(prepared_corpus.source)
    assert (folder / "tokenizer.pkl").is_file() and (folder / "token_bytes.npy").is_file()
    again = Tokenizer.load(prepared_corpus.source)
    text = "The quick brown fox jumps over the lazy dog. 1234"
    assert again.encode(text) == corpus_tokenizer.encode(text)
    assert np.array_equal(again.token_bytes, corpus_tokenizer.token_bytes)


def test_tokenizer_trained_on_a_small_fixture_has_the_full_vocab(small_corpus):
    _, tok = small_corpus
    assert tok.vocab_size == 8192 and tok.bos_token_id == 8188
    assert tok.token_bytes[8188:].tolist() == [0, 0, 0, 0]


def test_missing_tokenizer_names_make_prepare(tmp_path):
    from common.data import local_source
    from commonkit import write_shards
    write_shards(tmp_path / "data", [["one document"], ["another document"]])
    with pytest.raises(ContractError, match="make prepare") as e:
        Tokenizer.load(local_source(tmp_path / "data"))
    assert "DATA=" in str(e.value)
