"""The test model itself (issue 23): small, made fast, loaded by llama.cpp, and its
tokenizer.json tokenizes exactly as llama.cpp does (one token per UTF-8 byte), so a
token count made with the `tokenizers` crate is llama.cpp's count."""

import time

from tiny_gguf import VOCAB_SIZE, require_llama_cpp, tiny_model

TEXTS = ["hello world", "héllo wörld ✓ 日本語", "  two spaces\n\ttab", "a" * 300, ""]


def test_tiny_gguf_is_small_and_made_in_under_a_second(tmp_path):
    started = time.monotonic()
    model = tiny_model(tmp_path)
    assert time.monotonic() - started < 1.0
    assert model.gguf.stat().st_size < 1_000_000
    assert len(model.weights_hash) == 64
    # Same arguments, same bytes: the catalog's hash is reproducible.
    assert tiny_model(tmp_path / "again").weights_hash == model.weights_hash


def test_tokenizer_json_matches_llama_cpp_token_for_token(tmp_path):
    require_llama_cpp()
    import llama_cpp
    from tokenizers import Tokenizer

    model = tiny_model(tmp_path)
    llm = llama_cpp.Llama(model_path=str(model.gguf), vocab_only=True, verbose=False)
    assert llm.n_vocab() == VOCAB_SIZE
    tokenizer = Tokenizer.from_file(str(model.tokenizer_json))
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    for text in TEXTS:
        ours = tokenizer.encode(text).ids
        theirs = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert ours == theirs, text
        assert len(ours) == len(text.encode())
        assert tokenizer.decode(ours) == text
        assert llm.detokenize(theirs).decode() == text
