"""A real model server for the tests, made here with no download (issue 23).

`write_tiny_gguf` writes a tiny Llama-architecture GGUF with random weights (2 layers,
64 dims, a byte-level vocabulary of 256 byte tokens plus BOS/EOS; about 0.4 MB, made in
well under a second) that llama.cpp loads like any Llama model. `write_tokenizer_json`
writes the Hugging Face `tokenizer.json` of the same vocabulary (the `tokenizers`
package and the Rust `tokenizers` crate read it): one token per UTF-8 byte, the same ids
as in the GGUF. `LlamaServer` runs `python -m llama_cpp.server` (the
`llama-cpp-python[server]` package) on that file on loopback, and can stop, kill and
restart it on the same port.

The embeddings and output layer are shaped (see `write_tiny_gguf`) so that the model only
ever writes printable ASCII (32..=126) and never its EOS: a completion of `max_tokens` is exactly `max_tokens`
tokens and as many bytes, which makes token counts checkable. `allow_multibyte=True`
lets it write bytes >= 0x80 too (partial UTF-8 characters, split across chunks).

Reuse from another test module:

    from tiny_gguf import require_llama_cpp, tiny_model, LlamaServer
    require_llama_cpp()                   # fails, or skips only if allowed (below)
    model = tiny_model(tmp_path)          # .gguf, tokenizer.json, blake3 hash
    with LlamaServer(model.gguf) as server:
        server.base_url                   # "http://127.0.0.1:PORT/v1"
        server.stop(); server.start()     # same port: a model server restarted

Skipping: the tests that need llama.cpp FAIL when `llama_cpp` cannot be imported,
unless the environment says `YS_ALLOW_NO_LLAMA_CPP=1` (a developer machine without the
compiled package); CI never sets it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

# The name the model server answers to (`--model_alias`), and so the provider's
# `upstream_model`.
ALIAS = "tiny-llama"
BOS_ID = 256
EOS_ID = 257
VOCAB_SIZE = 258
# The model's own context (llama.cpp's `n_ctx` for the server unless told otherwise): a
# prompt longer than this is the user's mistake the model server refuses with a 400.
CONTEXT_LENGTH = 4096
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level map (byte -> printable character), as llama.cpp and the
    `tokenizers` ByteLevel pre-tokenizer use it: token `b` of the vocabulary is
    `bytes_to_unicode()[b]`."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def vocabulary() -> list[str]:
    """Token texts by id: the 256 bytes (byte-level characters), then BOS and EOS."""
    mapping = bytes_to_unicode()
    return [mapping[b] for b in range(256)] + ["<|bos|>", "<|eos|>"]


def write_tiny_gguf(
    path: os.PathLike | str,
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_embd: int = 64,
    n_ff: int = 128,
    n_head: int = 4,
    n_head_kv: int = 2,
    context_length: int = CONTEXT_LENGTH,
    allow_multibyte: bool = False,
) -> pathlib.Path:
    """Writes the model to `path` and returns it. Same arguments, same bytes (so the
    same BLAKE3 weights hash for the router's catalog)."""
    import gguf

    path = pathlib.Path(path)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("yellowstone-tiny-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocabulary())
    writer.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * 2)
    # llama.cpp's BPE loader requires a merges array and GGUF has no empty arrays: one
    # merge of two multi-character texts, which byte-level symbols (one character each)
    # never form, so every byte stays one token, as in tokenizer.json (no merges).
    writer.add_token_merges(["<|bos|> <|eos|>"])
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    head_dim = n_embd // n_head
    # Every token's embedding shares one large direction `u` (8 x a ±1 vector), so the
    # residual stream, and after the last RMS norm the hidden state h, stays close to
    # u whatever the context, while the smaller rest of h follows the context.
    u = rng.choice([-1.0, 1.0], size=n_embd).astype(np.float32)
    embeddings = 8.0 * u + rng.standard_normal((VOCAB_SIZE, n_embd)).astype(np.float32)
    writer.add_tensor("token_embd.weight", embeddings.astype(np.float32))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    # Logits: the row of each token the model may write is 2u plus a random part
    # orthogonal to u (scale 3); every other row, EOS's among them, is zero. Since h
    # is mostly u, a writable token's logit is about 2 u.h (~ +100) plus a
    # context-dependent spread of several units: the model picks among the writable
    # tokens by context, and EOS or an unwritable byte (logit 0) never comes near:
    # completions always run to max_tokens.
    output = np.zeros((VOCAB_SIZE, n_embd), dtype=np.float32)
    writable = list(range(0x20, 0x7F)) + (list(range(0x80, 0x100)) if allow_multibyte else [])
    unit = u / np.linalg.norm(u)
    for token in writable:
        r = rng.standard_normal(n_embd)
        r -= unit * (r @ unit)
        output[token] = (2.0 * u + 3.0 * r).astype(np.float32)
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tokenizer_json(path: os.PathLike | str) -> pathlib.Path:
    """Writes the Hugging Face tokenizer of the same vocabulary: byte-level BPE with no
    merges (one token per UTF-8 byte, ids as in the GGUF), BOS/EOS as special tokens."""
    path = pathlib.Path(path)
    vocab = {text: i for i, text in enumerate(vocabulary())}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": vocabulary()[i], "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i in (BOS_ID, EOS_ID)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    path.write_text(json.dumps(tokenizer, ensure_ascii=False))
    return path


def blake3_hex(path: os.PathLike | str) -> str:
    """The weights hash the router's `[[market.models]]` entry needs (R-PROV-1)."""
    import blake3

    return blake3.blake3(pathlib.Path(path).read_bytes()).hexdigest()


@dataclasses.dataclass
class TinyModel:
    gguf: pathlib.Path
    tokenizer_json: pathlib.Path
    weights_hash: str


def tiny_model(directory: os.PathLike | str, **gguf_args) -> TinyModel:
    """The GGUF, its tokenizer.json and its hash in `directory`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gguf_path = write_tiny_gguf(directory / "tiny-llama.gguf", **gguf_args)
    tokenizer = write_tokenizer_json(directory / "tokenizer.json")
    return TinyModel(gguf_path, tokenizer, blake3_hex(gguf_path))


def llama_cpp_importable() -> bool:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        return False
    return True


def require_llama_cpp() -> None:
    """Call at the top of a test (or a fixture) that needs llama.cpp: without the
    package it fails, and skips only where YS_ALLOW_NO_LLAMA_CPP=1 allows it."""
    import pytest

    if llama_cpp_importable():
        return
    if os.environ.get("YS_ALLOW_NO_LLAMA_CPP") == "1":
        pytest.skip("llama_cpp not importable and YS_ALLOW_NO_LLAMA_CPP=1")
    pytest.fail(
        "llama_cpp cannot be imported: pip install -r node/tests/python/requirements.txt "
        "(or set YS_ALLOW_NO_LLAMA_CPP=1 to skip the llama.cpp tests on purpose)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on loopback serving `model` as `alias`.

    `start()` (also on construction unless `start=False`) waits until /v1/models answers
    (at most `ready_timeout` s); `stop()` ends it with SIGTERM, `kill()` with SIGKILL;
    `start()` again reuses the same port. Its log is in `log_path`."""

    def __init__(self, model, *, alias=ALIAS, n_ctx=CONTEXT_LENGTH, port=None,
                 log_path=None, start=True, ready_timeout=60.0):
        self.model = pathlib.Path(model)
        self.alias = alias
        self.n_ctx = n_ctx
        self.port = port or free_port()
        self.log_path = pathlib.Path(log_path or self.model.with_suffix(f".{self.port}.log"))
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LlamaServer":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
             "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
             "--n_ctx", str(self.n_ctx), "--n_threads", "1", "--n_batch", "64",
             "--verbose", "False"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.time() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited ({self.proc.returncode}): "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.time() > deadline:
                self.kill()
                raise RuntimeError(f"llama_cpp.server not ready within {self.ready_timeout} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


if __name__ == "__main__":
    # `python tiny_gguf.py DIR`: writes the model and tokenizer to DIR, prints the hash.
    out = tiny_model(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(f"gguf={out.gguf} tokenizer={out.tokenizer_json} weights_hash={out.weights_hash}")
