"""A whole market on loopback in front of a real llama.cpp (issue 23): the
yellowstone-router with the tiny model in its catalog (`[[market.models]]`, the GGUF's
BLAKE3 hash), `python -m llama_cpp.server` serving that GGUF, a provider node selling
it, a consumer node, and the operator's connection subscribed to the credit batches.

    from llama_market import LlamaMarket
    with LlamaMarket(tmp_path) as market:
        openai.OpenAI(base_url=market.base_url, api_key="x", max_retries=0)
        market.llama.stop(); market.wait_offers_live(0)   # model server down
        market.next_credit(provider_address)              # a batch's totals

Every process is started from $YS_BIN_DIR (default <repo>/target/debug) and killed by
its pid at the end.
"""

from __future__ import annotations

import pathlib
import time

from conftest import BIN, WEI_PER_MOR, Process, get_json, keygen
from tiny_gguf import ALIAS, LlamaServer, require_llama_cpp, tiny_model

MODEL_ID = 1
PRICE_WEI_PER_TOKEN = 1_000_000_000


class LlamaMarket:
    def __init__(self, directory, *, provider_extra: str = "", consumer_extra: str = "",
                 router_extra: str = ""):
        require_llama_cpp()
        import subprocess

        from yellowstone_client.client import Client
        from yellowstone_client.protocol import Key

        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.model = tiny_model(d / "model")
        self.processes: list[Process] = []
        self.llama: LlamaServer | None = None
        self.operator = None
        try:
            self.provider_address = keygen("yellowstone-provider", d / "provider.key")
            self.consumer_address = keygen("yellowstone-consumer", d / "consumer.key")
            operator = subprocess.run([str(BIN / "yellowstone-router"), "keygen"], check=True,
                                      capture_output=True, text=True).stdout.split()
            fields = dict(f.split("=", 1) for f in operator if "=" in f)
            (d / "balances.csv").write_text(
                f"{self.provider_address},{WEI_PER_MOR}\n"
                f"{self.consumer_address},{500 * WEI_PER_MOR}\n")
            (d / "router.toml").write_text(
                f"[[market.models]]\nid = {MODEL_ID}\nweights_hash = \"{self.model.weights_hash}\"\n"
                f"name = \"{ALIAS}\"\n{router_extra}")
            self.router = self._start(
                [BIN / "yellowstone-router", "run", "--config", d / "router.toml",
                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--data-dir", d / "data", "--operator", fields["address"],
                 "--balance-snapshot", d / "balances.csv"])
            host, port = self.router.fields["listen"].rsplit(":", 1)
            self.operator = Client(host, int(port), Key.from_hex(fields["secret_hex"]))
            nonce = self.operator.send_signed("SubscribeBatches")
            self.operator.answer(nonce, "Ack")
            self.llama = LlamaServer(self.model.gguf, log_path=d / "llama.log")
            (d / "provider.toml").write_text(
                f'router_addr = "{self.router.fields["listen"]}"\nkey_file = "provider.key"\n'
                'listen = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\n'
                f"{provider_extra}\n"
                f"[[models]]\nmodel_id = {MODEL_ID}\nweights_file = \"{self.model.gguf}\"\n"
                f'upstream_base_url = "{self.llama.base_url}"\nupstream_model = "{ALIAS}"\n'
                f'price_wei_per_token = "{PRICE_WEI_PER_TOKEN}"\ncapacity = 4\n')
            self.provider = self._start(
                [BIN / "yellowstone-provider", "run", "--config", "provider.toml"])
            self.provider.wait_line("REGISTERED")
            (d / "consumer.toml").write_text(
                f'router_addr = "{self.router.fields["listen"]}"\nkey_file = "consumer.key"\n'
                f'listen = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\n{consumer_extra}\n')
            self.consumer = self._start(
                [BIN / "yellowstone-consumer", "run", "--config", "consumer.toml"])
            self.base_url = f'http://{self.consumer.fields["listen"]}/v1'
            self.wait_offers_live(1)
        except BaseException:
            self.close()
            raise

    def _start(self, args) -> Process:
        process = Process(args, self.dir)
        self.processes.append(process)
        return process

    def stop_provider(self, timeout: float = 60.0) -> dict:
        """SIGTERM to the provider node (a graceful stop, R-NODE-5): returns the fields
        of its `STOPPED` line once it has exited (its exit status must be 0)."""
        import signal

        proc = self.provider.proc
        proc.send_signal(signal.SIGTERM)
        fields = self.provider.wait_line("STOPPED", timeout)
        assert proc.wait(timeout) == 0, "the provider node exits 0 after a graceful stop"
        self.processes.remove(self.provider)
        return fields

    def start_provider(self) -> None:
        """Starts the provider node again on the same configuration and data directory."""
        self.provider = self._start(
            [BIN / "yellowstone-provider", "run", "--config", "provider.toml"])
        self.provider.wait_line("REGISTERED")

    def offers_live(self) -> int:
        models = {m["id"]: m for m in get_json(self.base_url + "/models")["data"]}
        return models[ALIAS]["offers_live"] if ALIAS in models else 0

    def wait_offers_live(self, count: int, timeout: float = 30.0) -> float:
        """Waits until the catalog (through the consumer node) lists `count` live
        offers of the model; returns the seconds it took; raises on time-out."""
        started = time.monotonic()
        last = None
        while time.monotonic() - started < timeout:
            try:
                last = self.offers_live()
                if last == count:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"offers_live stayed {last}, not {count}, for {timeout} s")

    def next_credit(self, provider: bytes | None = None, timeout: float = 60.0) -> dict:
        """The totals of the next credit batch (R-CREDIT, one every block) that credits
        `provider` (its address bytes; default this market's provider)."""
        from yellowstone_client.protocol import parse_address

        provider = provider or parse_address(self.provider_address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name, fields, _, _ = self.operator.recv()
            if name != "CreditBatch":
                continue
            for totals in fields["totals"]:
                if totals["provider"] == provider:
                    return totals
        raise TimeoutError(f"no credit batch for the provider within {timeout} s")

    def drain_credit(self, quiet_batches: int = 1, timeout: float = 60.0) -> None:
        """Reads batches until `quiet_batches` in a row credit nothing, so that the next
        credit seen is for what happens after this call."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < quiet_batches:
            if time.monotonic() > deadline:
                raise TimeoutError("the batches never went quiet")
            name, fields, _, _ = self.operator.recv()
            if name == "CreditBatch":
                quiet = quiet + 1 if not fields["totals"] else 0

    def metrics_text(self, process: Process) -> str:
        import urllib.request

        with urllib.request.urlopen(f'http://{process.fields["metrics"]}/metrics', timeout=10) as r:
            return r.read().decode()

    def close(self) -> None:
        if self.operator is not None:
            self.operator.close()
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.llama is not None:
            self.llama.kill()

    def __enter__(self) -> "LlamaMarket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
