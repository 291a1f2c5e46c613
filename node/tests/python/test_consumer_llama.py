"""Issue 23, the consumer node's cases against a real model server: llama.cpp
(`python -m llama_cpp.server`) serving tiny_gguf.py's random-weights model, the real
router, provider node and consumer node, the official `openai` package. The consumer
counts with the model's tokenizer.json, pinned by its BLAKE3 (R-NODE-4)."""

import openai
import pytest

from llama_market import LlamaMarket
from tiny_gguf import ALIAS, blake3_hex, write_tokenizer_json


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    d = tmp_path_factory.mktemp("consumer-llama")
    tokenizer = write_tokenizer_json(d / "consumer-tokenizer.json")
    consumer = (f'[[tokenizers]]\nmodel = "{ALIAS}"\nfile = "{tokenizer}"\n'
                f'blake3 = "{blake3_hex(tokenizer)}"\n')
    # One penalty point suspends the provider: a request blamed on it would show.
    router = "\n[market]\npenalty_points_suspend = 1\n"
    with LlamaMarket(d / "market", consumer_extra=consumer, router_extra=router) as market:
        yield market


def client(market, retries=0):
    return openai.OpenAI(base_url=market.base_url, api_key="unused", max_retries=retries,
                         timeout=60)


def test_llama_completions_plain_and_streamed_with_verified_usage(market):
    c = client(market)
    plain = c.completions.create(model=ALIAS, prompt="once upon a time", max_tokens=9,
                                 temperature=0)
    assert plain.object == "text_completion"
    assert plain.model == ALIAS
    text = plain.choices[0].text
    # The byte-level tokenizer: one token per byte, as llama.cpp generated them.
    assert plain.usage.completion_tokens == len(text.encode()) == 9
    pieces, usage = [], None
    for chunk in c.completions.create(model=ALIAS, prompt="once upon a time", max_tokens=9,
                                      temperature=0, stream=True,
                                      stream_options={"include_usage": True}):
        assert chunk.model == ALIAS
        if chunk.usage is not None:
            usage = chunk.usage
        pieces.extend(choice.text for choice in chunk.choices)
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == 9
    assert c.models.retrieve(ALIAS).model_extra["tokenizer_blake3"]


def test_llama_streamed_chat_usage_is_the_consumers_count(market):
    # llama-cpp-python 0.3.36 now and then ends a stream right after its opening
    # chunk (no content, no finish_reason, then [DONE]: seen calling it directly
    # too, after a streamed /v1/completions). The count must match the text in
    # every case; the test asks again until llama.cpp actually generates.
    for _ in range(5):
        usage, text = None, ""
        for chunk in client(market).chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "count me"}], max_tokens=11,
            temperature=0, seed=7, stream=True, stream_options={"include_usage": True},
        ):
            if chunk.usage is not None:
                usage = chunk.usage
            text += "".join(c.delta.content or "" for c in chunk.choices)
        assert usage is not None
        assert usage.completion_tokens == len(text.encode())
        if text:
            assert usage.completion_tokens == 11
            return
    pytest.fail("llama.cpp generated nothing five times")


def test_llama_context_overflow_is_a_400_not_retried_and_no_penalty(market):
    too_long = "x" * 6000  # the server's context is 4096 tokens, one per byte
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as refused:
            client(market, retries=2).chat.completions.create(
                model=ALIAS, messages=[{"role": "user", "content": too_long}], max_tokens=4)
        assert refused.value.response.headers["x-should-retry"] == "false"
    # Void, not fail: with penalty_points_suspend = 1 one fail would have suspended
    # the only provider; it still serves.
    assert market.offers_live() == 1
    answer = client(market).chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "still there?"}], max_tokens=3)
    assert answer.usage.completion_tokens == 3
