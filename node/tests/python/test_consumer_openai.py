"""Issue 23, the consumer node's cases, as an application sees them through the
official `openai` package (the stand-in model server behind the provider: it can
lie about usage and split characters, which a real server cannot be made to do)."""

import json
import urllib.request

import openai
import pytest

MODEL = "demo-model-1"


def client(market, retries=0):
    return openai.OpenAI(base_url=market["base_url"], api_key="unused", max_retries=retries)


def set_standin(market, **mode):
    # The switches not named go back to their start values (/standin/mode alone
    # changes only the ones it names).
    reset = urllib.request.Request(market["standin"] + "/standin/reset", data=b"", method="POST")
    urllib.request.urlopen(reset, timeout=10).read()
    request = urllib.request.Request(
        market["standin"] + "/standin/mode",
        data=json.dumps(mode).encode(),
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture
def standin(market):
    """The stand-in's switches for one test, back to the defaults after it."""
    yield lambda **mode: set_standin(market, **mode)
    set_standin(market)


def test_case_9_completions_plain_and_streamed_and_models_retrieve(market):
    c = client(market)
    plain = c.completions.create(model=MODEL, prompt="python completions", max_tokens=6)
    assert plain.object == "text_completion"
    assert plain.model == MODEL
    assert len(plain.choices[0].text.split()) == 6
    assert plain.usage.completion_tokens == 6
    pieces, usage = [], None
    for chunk in c.completions.create(
        model=MODEL, prompt="python completions", max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    ):
        assert chunk.model == MODEL
        if chunk.usage is not None:
            usage = chunk.usage
        pieces.extend(choice.text for choice in chunk.choices)
    assert "".join(pieces) == plain.choices[0].text
    assert usage is not None and usage.completion_tokens == 6
    model = c.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


def test_case_3_fields_past_token_max_are_refused_by_name(market):
    for field, value in [("n_predict", 100000), ("min_tokens", 100000), ("ignore_eos", True)]:
        with pytest.raises(openai.BadRequestError) as refused:
            client(market).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                extra_body={field: value},
            )
        assert field in str(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        client(market).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, n=64
        )
    assert "`n`" in str(refused.value)


def test_case_2_a_usage_claim_is_cut_to_the_text_received(market, standin):
    standin(tokens=1, usage_claim=1000000)
    answer = client(market).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100
    )
    text = answer.choices[0].message.content
    assert answer.usage.completion_tokens == len(text.encode())


def test_case_4_split_characters_are_counted_and_usage_given(market, standin):
    standin(tokens=24, utf8_split=True, omit_usage=True)
    usage, text = None, ""
    for chunk in client(market).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "ü" * 12
    assert usage is not None and usage.completion_tokens == 24


def test_case_8_max_tokens_over_the_quota_is_not_retried(market):
    # 500 MOR: 1,500,000 tokens a day; the consumer's tokens_max_limit is 32,768, so
    # the refusal here is the node's own 400, which must not be retried either.
    with pytest.raises(openai.BadRequestError) as refused:
        client(market, retries=3).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=40000
        )
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "40000" in str(refused.value)
