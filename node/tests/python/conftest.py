"""A market on loopback for the OpenAI-client tests: the real yellowstone-router,
the stand-in model server, a provider node and a consumer node, started from the
binaries in $YS_BIN_DIR (default: <repo>/target/debug; build them with
`cargo build -p yellowstone-gateway -p yellowstone-node --bins`). Every process is
killed by its pid at the end."""

import json
import os
import pathlib
import subprocess
import time
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = pathlib.Path(os.environ.get("YS_BIN_DIR", REPO / "target" / "debug"))
WEI_PER_MOR = 10**18


class Process:
    def __init__(self, args, cwd):
        self.proc = subprocess.Popen(
            [str(a) for a in args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        self.fields = self.wait_line("READY")

    def wait_line(self, prefix, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.proc.args[0]} exited before printing {prefix}")
            if line.startswith(prefix):
                return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        raise RuntimeError(f"no {prefix} line within {timeout} s")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def keygen(binary, out):
    return subprocess.run(
        [str(BIN / binary), "keygen", "--out", str(out)], check=True, capture_output=True, text=True
    ).stdout.strip()


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="session")
def market(tmp_path_factory):
    d = tmp_path_factory.mktemp("market")
    provider_address = keygen("yellowstone-provider", d / "provider.key")
    consumer_address = keygen("yellowstone-consumer", d / "consumer.key")
    operator = subprocess.run(
        [str(BIN / "yellowstone-router"), "keygen"], check=True, capture_output=True, text=True
    ).stdout
    operator_address = next(l.split("=", 1)[1] for l in operator.split() if l.startswith("address="))
    (d / "balances.csv").write_text(
        f"{provider_address},{WEI_PER_MOR}\n{consumer_address},{500 * WEI_PER_MOR}\n"
    )
    processes = []
    try:
        router = Process(
            [BIN / "yellowstone-router", "run", "--listen", "127.0.0.1:0", "--metrics-listen",
             "127.0.0.1:0", "--data-dir", d / "data", "--operator", operator_address,
             "--balance-snapshot", d / "balances.csv"], d)
        processes.append(router)
        standin = Process([BIN / "yellowstone-standin-llm", "--listen", "127.0.0.1:0"], d)
        processes.append(standin)
        (d / "model-1.weights").write_bytes(b"yellowstone-demo-model-1")
        (d / "provider.toml").write_text(
            f'router_addr = "{router.fields["listen"]}"\nkey_file = "provider.key"\n'
            'listen = "127.0.0.1:0"\nmetrics_listen = ""\n[[models]]\nmodel_id = 1\n'
            f'weights_file = "model-1.weights"\nupstream_base_url = "http://{standin.fields["listen"]}/v1"\n'
            'upstream_model = "standin"\nprice_wei_per_token = "1000000000"\ncapacity = 8\n'
        )
        provider = Process([BIN / "yellowstone-provider", "run", "--config", "provider.toml"], d)
        processes.append(provider)
        provider.wait_line("REGISTERED")
        (d / "consumer.toml").write_text(
            f'router_addr = "{router.fields["listen"]}"\nkey_file = "consumer.key"\n'
            'listen = "127.0.0.1:0"\nmetrics_listen = ""\n'
        )
        consumer = Process([BIN / "yellowstone-consumer", "run", "--config", "consumer.toml"], d)
        processes.append(consumer)
        base = f'http://{consumer.fields["listen"]}/v1'
        deadline = time.time() + 30
        while True:
            try:
                if get_json(base + "/models")["data"][0]["offers_live"] > 0:
                    break
            except Exception:
                pass
            if time.time() > deadline:
                raise RuntimeError("the market never listed model 1 live")
            time.sleep(0.05)
        yield {"base_url": base, "standin": f'http://{standin.fields["listen"]}'}
    finally:
        for process in reversed(processes):
            process.stop()
