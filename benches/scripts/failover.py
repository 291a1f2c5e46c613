#!/usr/bin/env python3
"""Issue 25's replication figures (SPEC §12, R-HA-2), measured on loopback.

Parts (--parts, comma separated):
  failover  failover time: a leader fault (SIGKILL, SIGSTOP past the election
            timeout, partition of its raft traffic, in turn) to the first ticket
            for an RFC sent after it, p50 / p99 / max over --kills faults, under
            loadgen traffic. It runs tests/tests/failover.rs
            (`failover_under_load_loses_and_doubles_no_acknowledged_credit`) with
            FAILOVER_KILLS, FAILOVER_RATE and FAILOVER_SUMMARY, in the release
            profile: that test's checks (nothing acknowledged lost or doubled, state
            hashes equal per block on every member) hold for every fault measured.
            Target: p99 <= 1.5 s.
  rate      a 3-member group beside a single router, interleaved in one sitting
            (single, group, group, single, ... per step): at each --rates rate a
            fresh router (or group) driven by `yellowstone-loadgen` (steady
            scenario; --target for the single router, --router a,b,c for the group)
            for --duration s. The maximum rate of each side is the highest rate it
            keeps up with by the loadgen's `--find-max` rule (sessions >= 95 % of
            RFCs sent, RFC -> ticket p99 < 100 ms, self-check ok; a side stops
            after two steps in a row that fall behind); then --pairs
            interleaved pairs at half the single router's maximum give the
            RFC -> ticket p99 of both. Targets: group max >= 0.9 x single's; group
            p99 within 1 ms of single's.

Every process is a child of this script on 127.0.0.1 with fresh data directories,
stopped by SIGTERM to its own pid; every run is bounded in time. Prints one line
per run and a summary; --json writes everything.

Two cores host all three members, the loadgen and (for the single router) one
router here: see docs/replication.md "Failover tests" for what the figures would
be on three machines.
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
# The group's router key (every member signs as one router, R-HA-2); any valid
# secp256k1 secret.
GROUP_ROUTER_KEY_HEX = "8f2a55949038a9610f50fb23b5883af3b4ecb3c3bb792cbcefbd1542c692be63"
NICE = 0
# Extra [market] keys for both sides (--market-extra), e.g. a larger
# user_sessions_open_max so that the quota is not what caps the rate.
MARKET_EXTRA = ""
# Whether the loadgen takes --router a,b,c (set in main from its --help).
LOADGEN_HAS_ROUTER = False


def child_priority():
    if NICE:
        os.nice(NICE)


def now_ms():
    return int(time.time() * 1000)


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def genesis_with_boundary_in(ahead_ms):
    """A genesis whose next block boundary falls `ahead_ms` from now (so a run's
    last batch seals just after its window instead of up to 12 s later)."""
    boundary = now_ms() + ahead_ms
    return boundary - BLOCK_MS * max(1, -(-ahead_ms // BLOCK_MS))


def keygen(router_bin):
    out = subprocess.run(
        [router_bin, "keygen"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return fields["secret_hex"], fields["address"]


def metrics_text(addr):
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as r:
            return r.read().decode()
    except Exception:  # a member not up yet, or gone: the caller retries or skips
        return ""


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


class Process:
    """A `yellowstone-router run` child; READY fields parsed."""

    def __init__(self, router_bin, args, log_path):
        self.stderr = open(log_path, "w")
        self.process = subprocess.Popen(
            [router_bin, "run"] + args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, env={**os.environ, "RUST_LOG": "warn"}, preexec_fn=child_priority,
        )
        self.ready = {}
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                self.ready = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                break
        if "listen" not in self.ready:
            self.stop()
            raise RuntimeError(f"router printed no READY line (see {log_path})")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()
        return self.process.returncode


class Single:
    """One router, durability always (the default a group is compared with)."""

    def __init__(self, bin_dir, work, operator_address, genesis_ms):
        self.dir = tempfile.mkdtemp(prefix="single-", dir=work)
        config = os.path.join(self.dir, "router.toml")
        with open(config, "w") as f:
            f.write(f"[network]\nbackend = \"mio\"\n[market]\ngenesis_ms = {genesis_ms}\n"
                    f"{MARKET_EXTRA}\n")
        self.router = Process(
            os.path.join(bin_dir, "yellowstone-router"),
            ["--config", config, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--durability", "always", "--operator", operator_address,
             "--data-dir", os.path.join(self.dir, "data")],
            os.path.join(self.dir, "stderr.log"),
        )

    def loadgen_target(self):
        return ["--target", self.router.ready["listen"]]

    def stop(self):
        code = self.router.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return [code]


class Group:
    """A 3-member group on loopback: `cluster keygen`, configs, `run` x3, `cluster init`,
    then wait until one member leads."""

    def __init__(self, bin_dir, work, operator_address, genesis_ms, members=3):
        router_bin = os.path.join(bin_dir, "yellowstone-router")
        self.dir = tempfile.mkdtemp(prefix="group-", dir=work)
        key = os.path.join(self.dir, "cluster.key")
        subprocess.run([router_bin, "cluster", "keygen", "--out", key], check=True,
                       capture_output=True, timeout=30)
        self.raft = [f"127.0.0.1:{free_port()}" for _ in range(members)]
        self.clients = [f"127.0.0.1:{free_port()}" for _ in range(members)]
        self.members = []
        try:
            for i in range(members):
                data = os.path.join(self.dir, f"member-{i + 1}")
                os.makedirs(data)
                shutil.copy(key, os.path.join(data, "cluster.key"))
                os.chmod(os.path.join(data, "cluster.key"), 0o600)
                config = os.path.join(self.dir, f"member-{i + 1}.toml")
                with open(config, "w") as f:
                    f.write(
                        f"[network]\nbackend = \"mio\"\n"
                        f"[identity]\nrouter_key_hex = \"{GROUP_ROUTER_KEY_HEX}\"\n"
                        f"operator = \"{operator_address}\"\n"
                        f"[market]\ngenesis_ms = {genesis_ms}\n{MARKET_EXTRA}\n"
                        f"[cluster]\nenabled = true\nmember_id = {i + 1}\n"
                        f"raft_listen = \"{self.raft[i]}\"\n"
                        f"client_endpoint = \"{self.clients[i]}\"\n"
                    )
                self.members.append(Process(
                    router_bin,
                    ["--config", config, "--data-dir", data, "--listen", self.clients[i],
                     "--metrics-listen", "127.0.0.1:0"],
                    os.path.join(self.dir, f"member-{i + 1}.stderr.log"),
                ))
            init = [router_bin, "cluster", "init", "--raft", self.raft[0], "--key", key]
            for i, raft in enumerate(self.raft):
                init += ["--member", f"{i + 1}={raft}"]
            subprocess.run(init, check=True, capture_output=True, timeout=60)
            deadline = time.time() + 30
            while time.time() < deadline:
                if self.leader() is not None:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"no leader within 30 s (see {self.dir})")
        except Exception:
            self.stop()
            raise

    def leader(self):
        for i, member in enumerate(self.members):
            if metric(metrics_text(member.ready["metrics"]), "yellowstone_cluster_is_leader") == 1:
                return i
        return None

    def loadgen_target(self):
        if LOADGEN_HAS_ROUTER:
            return ["--router", ",".join(self.clients)]
        # A loadgen without --router (before leader following landed): the leader's
        # endpoint; no fault happens during a rate run, so the leader stays.
        leader = self.leader()
        if leader is None:
            raise RuntimeError("no leader to drive")
        return ["--target", self.clients[leader]]

    def stop(self):
        codes = [member.stop() for member in self.members]
        shutil.rmtree(self.dir, ignore_errors=True)
        return codes


def loadgen(bin_dir, target_args, operator_secret, genesis_ms, rate, args):
    path = os.path.join(args.work, f"loadgen-{os.getpid()}-{now_ms()}.json")
    cmd = [
        os.path.join(bin_dir, "yellowstone-loadgen"), *target_args,
        "--operator-key", operator_secret, "--genesis-ms", str(genesis_ms),
        "--scenario", "steady", "--duration", str(args.duration), "--rate", str(rate),
        "--quiet", "--json", path,
    ]
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, timeout=args.duration + 60, env={**os.environ, "RUST_LOG": "error"},
        preexec_fn=child_priority,
    )
    try:
        with open(path) as f:
            summary = json.load(f)
        os.remove(path)
    except (OSError, ValueError):
        raise RuntimeError(f"loadgen wrote no summary (exit {proc.returncode}): "
                           f"{proc.stderr[-500:]}")
    lat = summary["latency_us"]["rfc_to_ticket"]
    sent = summary.get("rfcs_sent", 0)
    done = summary.get("sessions_completed", 0)
    ok = bool(summary.get("consistency", {}).get("ok"))
    return {
        "rate": rate,
        "p50_us": lat["p50"], "p99_us": lat["p99"], "p999_us": lat["p999"],
        "rfcs_sent": sent, "sessions_completed": done,
        "sessions_in_window_per_s": summary.get("sessions_in_window_per_s", 0.0),
        "self_check_ok": ok, "loadgen_exit": proc.returncode,
        # loadgen --find-max's rule.
        "keeps_up": ok and sent > 0 and done >= 0.95 * sent and lat["p99"] < 100_000,
    }


def one_run(side, bin_dir, rate, args, operator):
    secret, address = operator
    # The next block boundary just after the window and the loadgen's drain.
    genesis_ms = genesis_with_boundary_in(4_000 + args.duration * 1_000 + 2_600)
    system = (Single if side == "single" else Group)(bin_dir, args.work, address, genesis_ms)
    try:
        figures = loadgen(bin_dir, system.loadgen_target(), secret, genesis_ms, rate, args)
    finally:
        exits = system.stop()
    figures.update({"side": side, "exits": exits, "load": load_average()})
    print(f"  {side:<6} {rate:>6} RFC/s: window {figures['sessions_in_window_per_s']:>7.0f}/s "
          f"p50 {figures['p50_us']:>7} us p99 {figures['p99_us']:>7} us "
          f"self-check {'ok' if figures['self_check_ok'] else 'FAILED'} "
          f"-> {'keeps up' if figures['keeps_up'] else 'falls behind'} (load {figures['load']})",
          flush=True)
    return figures


def part_rate(args, operator):
    runs = []
    best = {"single": 0, "group": 0}
    # A side is done after two steps in a row that fall behind (one noisy run on a
    # shared host does not end its ladder); its maximum is the highest rate kept up.
    misses = {"single": 0, "group": 0}
    fell_behind_at = {}
    order = ["single", "group"]
    for step, rate in enumerate(args.rates):
        for side in (order if step % 2 == 0 else order[::-1]):
            if misses[side] >= 2:
                continue
            figures = one_run(side, args.bin_dir, rate, args, operator)
            runs.append({"part": "rate-step", **figures})
            if figures["keeps_up"]:
                best[side] = max(best[side], rate)
                misses[side] = 0
            else:
                misses[side] += 1
                fell_behind_at.setdefault(side, rate)
        if all(misses[s] >= 2 for s in order):
            break
    half = max(1, best["single"] // 2) if best["single"] else args.rates[0]
    p99 = {"single": [], "group": []}
    for pair in range(args.pairs):
        for side in (order if pair % 2 == 0 else order[::-1]):
            figures = one_run(side, args.bin_dir, half, args, operator)
            runs.append({"part": "half-rate", **figures})
            p99[side].append(figures["p99_us"])
    summary = {
        "single_max_rate": best["single"], "group_max_rate": best["group"],
        "rate_ratio": (best["group"] / best["single"]) if best["single"] else None,
        "fell_behind_at": fell_behind_at,
        "half_rate": half,
        "single_p99_us_median": statistics.median(p99["single"]) if p99["single"] else None,
        "group_p99_us_median": statistics.median(p99["group"]) if p99["group"] else None,
    }
    if summary["single_p99_us_median"] is not None and summary["group_p99_us_median"] is not None:
        summary["p99_difference_us"] = (summary["group_p99_us_median"]
                                        - summary["single_p99_us_median"])
    print(f"\nrate: single max {best['single']} RFC/s, group max {best['group']} RFC/s "
          f"(ratio {summary['rate_ratio']}; target >= 0.9); at {half} RFC/s p99 median "
          f"single {summary['single_p99_us_median']} us, group {summary['group_p99_us_median']} us "
          f"(difference {summary.get('p99_difference_us')} us; target <= 1000)", flush=True)
    return runs, summary


def part_failover(args):
    summary_path = os.path.join(args.work, "failover-summary.json")
    env = {**os.environ, "FAILOVER_KILLS": str(args.kills), "FAILOVER_PROBE_KILLS": str(args.kills),
           "FAILOVER_RATE": str(args.failover_rate), "FAILOVER_SUMMARY": summary_path,
           "FAILOVER_CLUSTER": args.cluster_keys}
    cmd = ["cargo", "test", "-q", "-p", "yellowstone-tests", "--test", "failover"]
    if args.profile == "release":
        cmd.append("--release")
    # --probe-only: the ticket probe is the only traffic (no loadgen).
    test = "each_leader_fault_kind" if args.probe_only else "failover_under_load"
    cmd += ["--", "--nocapture", test]
    started = time.time()
    # Bounded: a fault takes ~20 s (its loadgen run waits for the batch of its block).
    proc = subprocess.run(cmd, cwd=args.repo, env=env, timeout=120 + args.kills * 60,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    lines = [l for l in proc.stderr.splitlines() if l.startswith(("round ", "failover"))]
    for line in lines:
        print("  " + line, flush=True)
    if proc.returncode != 0:
        lines = proc.stderr.splitlines()
        why = [l for i, l in enumerate(lines)
               if "panicked at" in l or (i > 0 and "panicked at" in lines[i - 1])]
        raise RuntimeError(f"the failover test failed (exit {proc.returncode}):\n"
                           + "\n".join(why[:6]) + f"\n{proc.stdout[-2000:]}")
    with open(summary_path) as f:
        summary = json.load(f)
    summary["wall_s"] = time.time() - started
    summary["test"] = test
    print(f"\nfailover over {summary['faults']} faults: p50 {summary['p50_ms']:.0f} ms, "
          f"p99 {summary['p99_ms']:.0f} ms, max {summary['max_ms']:.0f} ms (target p99 <= 1500)",
          flush=True)
    return summary


def main():
    global NICE, LOADGEN_HAS_ROUTER, MARKET_EXTRA
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    parser.add_argument("--parts", default="failover,rate")
    parser.add_argument("--bin-dir", default=os.path.join(target, "release"),
                        help="directory holding yellowstone-router and yellowstone-loadgen")
    parser.add_argument("--profile", default="release", choices=["release", "dev"],
                        help="profile the failover test is built in")
    parser.add_argument("--repo", default=repo)
    parser.add_argument("--kills", type=int, default=20, help="failover: faults (100: the issue's)")
    parser.add_argument("--failover-rate", type=float, default=200.0,
                        help="failover: the loadgen's RFC rate during the faults")
    parser.add_argument("--probe-only", action="store_true",
                        help="failover: no loadgen, the ticket probe's traffic only")
    parser.add_argument("--cluster-keys", default="",
                        help="failover: extra [cluster] keys, ';'-separated (FAILOVER_CLUSTER)")
    parser.add_argument("--rates", default="500,1000,1500,2000,3000,4000",
                        help="rate: the ladder of RFC rates, ascending")
    parser.add_argument("--duration", type=int, default=5, help="rate: seconds per run")
    parser.add_argument("--pairs", type=int, default=3, help="rate: pairs at half the max")
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--market-extra", default="",
                        help="rate: extra [market] lines for both sides, ';'-separated "
                             "(e.g. 'user_sessions_open_max = 4096')")
    parser.add_argument("--json")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    NICE = args.nice
    MARKET_EXTRA = "\n".join(l.strip() for l in args.market_extra.split(";") if l.strip())
    loadgen_help = subprocess.run([os.path.join(args.bin_dir, "yellowstone-loadgen"), "--help"],
                                  capture_output=True, text=True, timeout=30).stdout
    LOADGEN_HAS_ROUTER = "--router" in loadgen_help
    args.rates = [int(r) for r in args.rates.split(",")]
    parts = args.parts.split(",")
    unknown = set(parts) - {"failover", "rate"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)} (failover, rate)")
    own_work = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="failover-bench-")
    out = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "load_before": load_average(), "cores": os.cpu_count()}
    try:
        if "failover" in parts:
            out["failover"] = part_failover(args)
        if "rate" in parts:
            operator = keygen(os.path.join(args.bin_dir, "yellowstone-router"))
            out["rate_runs"], out["rate"] = part_rate(args, operator)
    finally:
        if own_work:
            shutil.rmtree(args.work, ignore_errors=True)
    out["load_after"] = load_average()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
