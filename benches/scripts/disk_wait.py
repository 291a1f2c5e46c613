#!/usr/bin/env python3
"""Issue 18, "what waits for the disk": RFC -> ticket latency and router CPU per
session, for several router binaries run INTERLEAVED in one sitting.

Each run: a fresh data directory, `yellowstone-router run` on 127.0.0.1 (port 0),
driven by `yellowstone-loadgen --target` (steady scenario, open loop) for --seconds,
then SIGTERM to the router's pid. Router CPU is read from /proc/<pid>/task/*/stat
around the loadgen's run (per thread name). Prints one line per run and a JSON file.

    python3 benches/scripts/disk_wait.py --pairs 3 --rate 2250 \
        --router before=/work/base-bin/8861929/yellowstone-router \
        --router after=target/release/yellowstone-router \
        --durability always,none --loadgen /work/base-bin/8861929/yellowstone-loadgen
"""
import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

BLOCK_MS = 12_000
TICKS = os.sysconf("SC_CLK_TCK")


def now_ms():
    return int(time.time() * 1000)


def thread_cpu(pid):
    """CPU seconds per thread name (summed over threads of the same name)."""
    out = {}
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        # io_uring workers are named iou-wrk-<tid>, gateway threads ys-gw-<n>.
        key = name.rstrip("0123456789-") or name
        out[key] = out.get(key, 0.0) + cpu
    return out


def journal_metrics(metrics_addr):
    """The router's journal counters (yellowstone_journal_*) from its metrics endpoint."""
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("yellowstone_journal_"):
            name, value = line.rsplit(" ", 1)
            # Counters end in _total (yellowstone_journal_fsyncs_total -> "fsyncs").
            out[name[len("yellowstone_journal_"):].removesuffix("_total")] = float(value)
        elif line.startswith("yellowstone_stage_latency_seconds{"):
            # e.g. {stage="durable_wait",quantile="0.99"} -> durable_wait_p0.99 (us)
            name, value = line.rsplit(" ", 1)
            labels = dict(kv.split("=", 1) for kv in name[name.index("{") + 1:-1].split(","))
            stage, quantile = labels["stage"].strip('"'), labels["quantile"].strip('"')
            if value != "NaN":
                out[f"stage_{stage}_p{quantile}"] = round(float(value) * 1e6, 1)
    return out


def keygen(router):
    text = subprocess.run([router, "keygen"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return fields["secret_hex"], fields["address"]


def one_run(args, label, router, durability, key, address, extra_toml):
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        ahead_ms = args.settle_ms + 1_000 + args.seconds * 1_000 + 1_600 + 1_500
        boundary = now_ms() + ahead_ms
        genesis_ms = boundary - BLOCK_MS * -(-ahead_ms // BLOCK_MS)
        config = os.path.join(work, "router.toml")
        with open(config, "w") as f:
            f.write(f"[market]\ngenesis_ms = {genesis_ms}\n{extra_toml}")
        nice = ["nice", "-n", str(args.nice)] if args.nice else []
        proc = subprocess.Popen(
            nice + [router, "run", "--config", config, "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--durability", durability,
             "--operator", address, "--data-dir", os.path.join(work, "data")],
            stdout=subprocess.PIPE, stderr=open(os.path.join(work, "stderr.log"), "w"),
            text=True, env={**os.environ, "RUST_LOG": "warn"})
        try:
            listen = None
            deadline = time.time() + 30
            while time.time() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("READY "):
                    ready = dict(p.split("=", 1) for p in line.split()[1:])
                    listen, metrics = ready["listen"], ready["metrics"]
                    break
            if listen is None:
                raise RuntimeError(f"{label}: router printed no READY line")
            time.sleep(args.settle_ms / 1000)
            out_json = os.path.join(work, "loadgen.json")
            before = thread_cpu(proc.pid)
            journal_before = journal_metrics(metrics)
            perf = None
            if args.perf:
                perf = subprocess.Popen(
                    ["perf", "record", "-q", "-g", "-p", str(proc.pid), "-o",
                     os.path.join(args.perf, f"{label}-{durability}-{time.time():.0f}.data"),
                     "--", "sleep", str(args.seconds)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(
                nice + [args.loadgen, "--target", listen, "--operator-key", key,
                 "--genesis-ms", str(genesis_ms), "--scenario", "steady",
                 "--duration", str(args.seconds), "--rate", str(args.rate), "--quiet",
                 "--json", out_json],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": "error"}, timeout=args.seconds + 60)
            after = thread_cpu(proc.pid)
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            loadgen_cpu = (children_after.ru_utime + children_after.ru_stime
                           - children_before.ru_utime - children_before.ru_stime)
            if perf is not None:
                perf.wait(timeout=60)
            journal_after = journal_metrics(metrics)
            with open(out_json) as f:
                summary = json.load(f)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    sessions = max(summary["sessions_completed"], 1)
    threads = {k: round(after.get(k, 0) - before.get(k, 0), 3) for k in after}
    cpu = sum(threads.values())
    t = summary["latency_us"]["rfc_to_ticket"]
    return {
        "label": label, "durability": durability, "rate": args.rate,
        "sessions": summary["sessions_completed"], "ok": summary["consistency"]["ok"]
        if isinstance(summary.get("consistency"), dict) else None,
        "p50_us": t["p50"], "p99_us": t["p99"], "p999_us": t["p999"], "max_us": t["max"],
        "router_cpu_s": round(cpu, 3), "cpu_us_per_session": round(cpu * 1e6 / sessions, 1),
        "loadgen_cpu_us_per_session": round(loadgen_cpu * 1e6 / sessions, 1),
        "threads": {k: v for k, v in threads.items() if v > 0},
        "fsyncs_per_session": round((journal_after.get("fsyncs", 0)
                                     - journal_before.get("fsyncs", 0)) / sessions, 3),
        "records_per_write": round((journal_after.get("records", 0)
                                    - journal_before.get("records", 0))
                                   / max(journal_after.get("writes", 0)
                                         - journal_before.get("writes", 0), 1), 2),
        "load": os.getloadavg()[0],
        "stages_us": {k[len("stage_"):]: v for k, v in journal_after.items()
                      if k.startswith("stage_")},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--router", action="append", required=True, help="label=path")
    parser.add_argument("--loadgen", required=True)
    parser.add_argument("--durability", default="always")
    parser.add_argument("--rate", type=int, default=2250)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--settle-ms", type=int, default=0,
                        help="wait this long after READY before the load (e.g. a large balance snapshot)")
    parser.add_argument("--toml", action="append", default=[], help="label=extra toml text")
    parser.add_argument("--work", default=None)
    parser.add_argument("--nice", type=int, default=0,
                        help="run router and loadgen under nice -n N (both sides alike)")
    parser.add_argument("--out", default="disk_wait.json")
    parser.add_argument("--perf", default=None,
                        help="directory: record each router under `perf record -g` during the load")
    args = parser.parse_args()
    routers = [r.split("=", 1) for r in args.router]
    extra = dict(t.split("=", 1) for t in args.toml)
    key, address = keygen(routers[0][1])
    results = []
    for n in range(args.pairs):
        for durability in args.durability.split(","):
            for label, path in routers:
                r = one_run(args, label, path, durability, key, address,
                            extra.get(label, "").replace("\\n", "\n"))
                r["round"] = n
                results.append(r)
                print(f"{label:>10} {durability:>6} round {n}: p50 {r['p50_us']} p99 {r['p99_us']} "
                      f"p99.9 {r['p999_us']} max {r['max_us']} us, sessions {r['sessions']}, "
                      f"{r['cpu_us_per_session']} us CPU/session (loadgen {r['loadgen_cpu_us_per_session']}), "
                      f"fsyncs/session {r['fsyncs_per_session']}, records/write "
                      f"{r['records_per_write']}, load {r['load']:.1f}, "
                      f"threads {r['threads']}", flush=True)
                stages = r["stages_us"]
                print("           stages us: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(stages.items())
                    if k.split("_p")[0] in ("durable_wait", "apply")), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
