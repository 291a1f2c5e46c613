#!/usr/bin/env python3
"""Before/after pairs of the gateway's figures, interleaved in one sitting.

Two directories of release binaries (each holding yellowstone-router and
yellowstone-loadgen) are compared run by run: before, after, after, before, ...
(the order alternates each pair so that neither side always runs first on a machine
whose load drifts). Every run is bounded in time; every router is a child of this
script on 127.0.0.1 with a fresh data directory, stopped by SIGTERM to its pid.

Parts (--parts, comma separated):
  embedded   the README's main job: `yellowstone-loadgen` with its defaults
             (embedded router, 2000 RFC/s, 10 s; --embedded-duration shortens it)
  external   `yellowstone-router run` (durability always) driven by
             `yellowstone-loadgen --target` (steady scenario) at each --rates rate on
             each --backends backend: RFC-to-ticket p50/p99/p99.9, sessions/s, router
             CPU (utime+stime from /proc/<pid>/stat over the loadgen's run) per
             session, rejections by code, and the gateway's in-flight counters
  ping       the loadgen's ping mode (50 connections, pipeline 16) against a router
             with durability none; `redis-benchmark -t ping -c 50 -P 16` beside it
             when redis-server is installed

Prints one line per run and a table of medians per side; --json writes every run.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BLOCK_MS = 12_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Niceness of every child (router, loadgen, redis); --nice sets it.
NICE = 0


def child_priority():
    if NICE:
        os.nice(NICE)


def now_ms():
    return int(time.time() * 1000)


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def proc_cpu_s(pid):
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def keygen(router_bin):
    out = subprocess.run(
        [router_bin, "keygen"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return fields["secret_hex"], fields["address"]


def genesis_with_boundary_in(ahead_ms):
    boundary = now_ms() + ahead_ms
    return boundary - BLOCK_MS * max(1, -(-ahead_ms // BLOCK_MS))


class Router:
    """One `yellowstone-router run` child on loopback with a fresh data directory."""

    def __init__(self, bin_dir, work, backend, durability, operator, genesis_ms, extra=""):
        self.dir = tempfile.mkdtemp(prefix="router-", dir=work)
        config = os.path.join(self.dir, "router.toml")
        with open(config, "w") as f:
            f.write(f"[market]\ngenesis_ms = {genesis_ms}\n{extra}\n")
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w")
        self.process = subprocess.Popen(
            [
                os.path.join(bin_dir, "yellowstone-router"), "run",
                "--config", config,
                "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--backend", backend, "--durability", durability,
                "--operator", operator,
                "--data-dir", os.path.join(self.dir, "data"),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, env={**os.environ, "RUST_LOG": "warn"}, preexec_fn=child_priority,
        )
        self.ready = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                self.ready = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                break
        if "listen" not in self.ready:
            self.stop()
            raise RuntimeError(f"router printed no READY line ({self.dir})")

    def cpu_s(self):
        return proc_cpu_s(self.process.pid)

    def metrics(self):
        try:
            url = f"http://{self.ready['metrics']}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except Exception:  # the figures beside it still stand
            return ""

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()
        code = self.process.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


def metric_samples(text, name):
    """Every sample of `name` in Prometheus text: {"{labels}" or "": value}."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            try:
                samples[series[len(name):]] = float(value)
            except ValueError:
                pass
    return samples


def metric_sum_by(text, name):
    return {k or "total": v for k, v in metric_samples(text, name).items()}


def loadgen_summary(cmd, timeout_s, work):
    path = os.path.join(work, f"loadgen-{os.getpid()}-{now_ms()}.json")
    started = time.time()
    proc = subprocess.run(
        cmd + ["--quiet", "--json", path],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, timeout=timeout_s, env={**os.environ, "RUST_LOG": "error"},
        preexec_fn=child_priority,
    )
    wall = time.time() - started
    try:
        with open(path) as f:
            summary = json.load(f)
        os.remove(path)
    except (OSError, ValueError):
        raise RuntimeError(f"loadgen wrote no summary (exit {proc.returncode}): "
                           f"{proc.stderr[-500:]}")
    summary["_exit"] = proc.returncode
    summary["_wall_s"] = wall
    return summary


def market_figures(summary):
    lat = summary["latency_us"]["rfc_to_ticket"]
    return {
        "p50_us": lat["p50"], "p99_us": lat["p99"], "p999_us": lat["p999"],
        "sessions_per_s": summary.get("sessions_per_s", 0.0),
        "sessions_in_window_per_s": summary.get("sessions_in_window_per_s", 0.0),
        "sessions_completed": summary.get("sessions_completed", 0),
        "rfcs_sent": summary.get("rfcs_sent", 0),
        "rejected": summary.get("rejected", {}),
        "failed": summary.get("failed", {}),
        "self_check_ok": summary.get("consistency", {}).get("ok"),
        "loadgen_exit": summary["_exit"],
    }


def run_embedded(side, bin_dir, args):
    cmd = [os.path.join(bin_dir, "yellowstone-loadgen")]
    if args.embedded_duration:
        cmd += ["--duration", str(args.embedded_duration)]
    summary = loadgen_summary(cmd, 120, args.work)
    return {"part": "embedded", "side": side, **market_figures(summary)}


def run_external(side, bin_dir, backend, rate, args, operator):
    secret, address = operator
    ahead_ms = 1_000 + args.duration * 1_000 + 1_600 + 1_000
    genesis_ms = genesis_with_boundary_in(ahead_ms)
    extra = args.before_config if side == "before" else args.after_config
    router = Router(bin_dir, args.work, backend, "always", address, genesis_ms,
                    extra.replace("\\n", "\n"))
    try:
        cmd = [
            os.path.join(bin_dir, "yellowstone-loadgen"),
            "--target", router.ready["listen"], "--operator-key", secret,
            "--genesis-ms", str(genesis_ms), "--scenario", "steady",
            "--duration", str(args.duration), "--rate", str(rate),
        ] + (["--users", str(args.users)] if args.users else [])
        cpu_before = router.cpu_s()
        summary = loadgen_summary(cmd, args.duration + 60, args.work)
        cpu = router.cpu_s() - cpu_before
        text = router.metrics()
    finally:
        code = router.stop()
    figures = market_figures(summary)
    sessions = max(1, figures["sessions_completed"])
    return {
        "part": "external", "side": side, "backend": backend, "rate": rate,
        **figures,
        "router_cpu_s": cpu,
        "router_cpu_us_per_session": cpu * 1e6 / sessions,
        "router_rejections": metric_sum_by(text, "yellowstone_rejections_total"),
        "router_exit": code,
    }


def run_ping(side, bin_dir, args, operator):
    router = Router(bin_dir, args.work, "uring", "none", operator[1], 0)
    try:
        summary = loadgen_summary(
            [
                os.path.join(bin_dir, "yellowstone-loadgen"),
                "--target", router.ready["listen"],
                "--ping-connections", "50", "--ping-pipeline", "16",
                "--duration", "3", "--ping-warmup-ms", "300",
            ],
            60, args.work,
        )
    finally:
        router.stop()
    return {
        "part": "ping", "side": side,
        "pings_per_s": summary.get("pings_per_s"),
        "p50_us": summary.get("latency_us", {}).get("p50"),
        "p99_us": summary.get("latency_us", {}).get("p99"),
        "connection_errors": summary.get("connection_errors"),
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_redis():
    server = shutil.which("redis-server")
    bench = shutil.which("redis-benchmark")
    if not server or not bench:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=child_priority,
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            [bench, "-h", "127.0.0.1", "-p", str(port), "-t", "ping", "--csv",
             "-c", "50", "-P", "16", "-n", "2000000"],
            capture_output=True, text=True, timeout=60, preexec_fn=child_priority,
        ).stdout
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    rows = [line.replace('"', "").split(",") for line in out.splitlines()]
    for row in rows:
        if row and row[0].startswith("PING") and len(row) > 1:
            return {"part": "redis", "side": "redis", "pings_per_s": float(row[1])}
    return None


def describe(run):
    if run["part"] in ("embedded", "external"):
        rejected = ",".join(f"{k}={v}" for k, v in sorted(run["rejected"].items())) or "-"
        failed = ",".join(f"{k}={v}" for k, v in sorted(run["failed"].items())) or "-"
        head = run["part"] if run["part"] == "embedded" else \
            f"{run['backend']:<5} {run['rate']:>5}/s"
        cpu = f" cpu {run['router_cpu_us_per_session']:6.1f} us/session" \
            if "router_cpu_us_per_session" in run else ""
        if run.get("router_rejections"):
            rejected += " router " + ",".join(
                f"{k}={v:.0f}" for k, v in sorted(run["router_rejections"].items()))
        return (f"{head:<14} {run['side']:<6} p50 {run['p50_us']:>6} p99 {run['p99_us']:>6} "
                f"p99.9 {run['p999_us']:>6} us  sessions {run['sessions_per_s']:7.0f}/s "
                f"(window {run['sessions_in_window_per_s']:7.0f}/s){cpu}  "
                f"rejected {rejected} failed {failed} check {run['self_check_ok']}")
    if run["part"] == "ping":
        return (f"ping           {run['side']:<6} {run['pings_per_s']:10.0f} pings/s "
                f"p50 {run['p50_us']} p99 {run['p99_us']} us errors {run['connection_errors']}")
    return f"redis                 {run['pings_per_s']:10.0f} pings/s"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="directory of the 'before' binaries")
    parser.add_argument("--after", required=True, help="directory of the 'after' binaries")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--parts", default="embedded,external,ping")
    parser.add_argument("--rates", default="2250,4050", help="external runs, RFC/s")
    parser.add_argument("--backends", default="uring,mio")
    parser.add_argument("--users", type=int, default=0,
                        help="external runs: simulated users, i.e. user connections "
                             "(0: the loadgen's default)")
    parser.add_argument("--duration", type=int, default=5, help="external window, s")
    parser.add_argument("--embedded-duration", type=int, default=0,
                        help="embedded window, s (0: the loadgen's default)")
    parser.add_argument("--before-config", default="",
                        help="TOML appended to the 'before' routers' config (\\n for newlines)")
    parser.add_argument("--after-config", default="",
                        help="TOML appended to the 'after' routers' config (\\n for newlines)")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness of every child (negative needs root): on a machine "
                             "shared with builds, both sides get the same larger share")
    parser.add_argument("--json", help="write every run here")
    args = parser.parse_args()
    global NICE
    NICE = args.nice
    args.work = tempfile.mkdtemp(prefix="ab-gateway-")
    parts = args.parts.split(",")
    sides = {"before": args.before, "after": args.after}
    operator = keygen(os.path.join(args.after, "yellowstone-router"))
    runs = []

    def record(run):
        run["load_average"] = load_average()
        runs.append(run)
        print(f"[{run['load_average']}] {describe(run)}", flush=True)

    try:
        for pair in range(args.pairs):
            order = ["before", "after"] if pair % 2 == 0 else ["after", "before"]
            if "embedded" in parts:
                for side in order:
                    record(run_embedded(side, sides[side], args))
            if "external" in parts:
                for rate in [int(r) for r in args.rates.split(",")]:
                    for backend in args.backends.split(","):
                        for side in order:
                            record(run_external(side, sides[side], backend, rate, args,
                                                operator))
            if "ping" in parts:
                for side in order:
                    record(run_ping(side, sides[side], args, operator))
                redis = run_redis()
                if redis:
                    record(redis)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs, f, indent=1)
    print("\nmedians (after / before)")
    keys = {}
    for run in runs:
        if run["part"] == "external":
            keys.setdefault((run["part"], run["backend"], run["rate"]), []).append(run)
        else:
            keys.setdefault((run["part"],), []).append(run)
    for key, group in keys.items():
        fields = ["pings_per_s"] if key[0] in ("ping", "redis") else \
            ["p50_us", "p99_us", "p999_us", "sessions_per_s"] + \
            (["router_cpu_us_per_session"] if key[0] == "external" else [])
        cells = []
        for field in fields:
            med = {s: statistics.median([r[field] for r in group if r["side"] == s])
                   for s in ("before", "after", "redis") if any(r["side"] == s for r in group)}
            ratio = f" ({med['after'] / med['before']:.2f}x)" \
                if "after" in med and "before" in med and med["before"] else ""
            cells.append(f"{field} " + " / ".join(f"{med[s]:.0f}" for s in
                                                 ("after", "before", "redis") if s in med)
                         + ratio)
        print(" ".join(str(k) for k in key), "|", "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
