"""R-NODE-2 through the official `openai` Python package (and curl): an application
uses the consumer node exactly as it would use OpenAI."""

import json
import subprocess
import urllib.request

import openai
import pytest

MODEL = "demo-model-1"


def client(market):
    return openai.OpenAI(base_url=market["base_url"], api_key="unused-by-the-consumer-node", max_retries=0)


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


def test_models_come_from_the_router_catalog_with_the_best_price(market):
    models = {m.id: m for m in client(market).models.list()}
    assert MODEL in models
    assert models[MODEL].model_extra["best_price_wei_per_token"] == "1000000000"
    assert models["demo-model-2"].model_extra["offers_live"] == 0


def test_completion_not_streamed(market):
    answer = client(market).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "python plain"}], max_tokens=8
    )
    assert answer.model == MODEL
    assert answer.usage.completion_tokens == 8
    assert len(answer.choices[0].message.content.split()) == 8
    assert answer.choices[0].finish_reason == "length"


def test_completion_streamed_is_whole_and_matches_the_plain_answer(market):
    messages = [{"role": "user", "content": "python stream"}]
    plain = client(market).chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    stream = client(market).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == plain.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 10


def test_unknown_model_is_a_404(market):
    with pytest.raises(openai.NotFoundError) as error:
        client(market).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert "catalog" in str(error.value)


def test_a_cut_stream_raises_in_the_application(market):
    set_standin(market, cut_after_tokens=2)
    try:
        stream = client(market).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "cut"}], max_tokens=8, stream=True
        )
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
    finally:
        set_standin(market)


def test_a_prompt_over_the_context_is_a_bad_request_in_the_application(market):
    # R-NODE-5: the model server's own 400 reaches the application as a 400 (and the
    # session is reported void: node/tests/e2e_nodes.rs checks the report).
    set_standin(market, context_tokens_max=3)
    try:
        with pytest.raises(openai.BadRequestError) as error:
            client(market).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "far too many words here"}], max_tokens=8
            )
        assert error.value.code == "context_length_exceeded"
        assert "maximum context length" in str(error.value)
    finally:
        set_standin(market)


def test_curl_gets_a_completion(market):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "curl"}],
                       "max_tokens": 4, "stream": True})
    out = subprocess.run(
        ["curl", "-sN", "--fail", "-H", "content-type: application/json", "-d", body,
         market["base_url"] + "/chat/completions"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    assert out.rstrip().endswith("data: [DONE]")
    words = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in out.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert len(words.split()) == 4
