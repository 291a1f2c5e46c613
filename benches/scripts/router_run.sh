#!/bin/bash
# One bounded market run against a router child, for interleaved before/after or
# backend pairs (issue 18, BENCHMARKS.md "Issue 18: the network path").
#
#   router_run.sh ROUTER_BIN LOADGEN_BIN BACKEND RATE DURATION_S TAG [over]
#
# Starts `ROUTER_BIN run` on 127.0.0.1 (port 0) with a fresh data directory under
# ${WORK:-/tmp/router-runs}/TAG, drives it with `LOADGEN_BIN --target` (steady scenario,
# 32 users, 16 providers) for DURATION_S seconds at RATE RFC/s, stops it with SIGTERM
# (its pid only) and prints one line: sessions, sessions per second of the window,
# RFC-to-ticket p50/p99/p99.9 (us), the router's CPU over the loadgen's run (utime +
# stime from /proc/PID/stat) and per session, the signature work the router measured in
# place (yellowstone_signature_* metrics) and its share of that CPU, and CPU seconds
# per thread (/proc/PID/task/*/stat), the probe answers refused because their probe had
# timed out (unknown_probe: work wasted under overload) and the loadgen's own CPU
# (/usr/bin/time). `over`: 5 s more before the block boundary the
# loadgen waits for (a backlog is expected). Environment: DURA (durability, default
# always), EXTRA (TOML lines appended to the router's config, e.g.
# '[network]\nuring_defer_taskrun = false\n').
set -u
if [ $# -lt 6 ]; then
  echo "usage: router_run.sh ROUTER_BIN LOADGEN_BIN uring|mio RATE DURATION_S TAG [over]" >&2
  exit 2
fi
R=$1; L=$2; BACKEND=$3; RATE=$4; DUR=$5; TAG=$6; OVER=${7:-}
W=${WORK:-/tmp/router-runs}/$TAG; rm -rf "$W"; mkdir -p "$W"
KEYS=$("$R" keygen)
KEY=$(echo "$KEYS" | sed -n 's/^secret_hex=//p'); ADDR=$(echo "$KEYS" | sed -n 's/^address=//p')
NOW=$(date +%s%3N)
DRAIN=0; [ -n "$OVER" ] && DRAIN=5000
AHEAD=$((1000 + DUR*1000 + DRAIN + 1600 + 1200))
K=$(( (AHEAD + 11999) / 12000 ))
GEN=$((NOW + AHEAD - K*12000))   # a block boundary right after the last report
printf "[market]\ngenesis_ms = %s\n${EXTRA:-}" $GEN > "$W/router.toml"
RUST_LOG=warn "$R" run --config "$W/router.toml" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --backend "$BACKEND" --durability "${DURA:-always}" --operator "$ADDR" --data-dir "$W/data" \
  > "$W/stdout" 2> "$W/stderr" &
RPID=$!
for _ in $(seq 1 300); do grep -q READY "$W/stdout" 2>/dev/null && break; sleep 0.1; done
LISTEN=$(grep -o 'listen=[^ ]*' "$W/stdout" | cut -d= -f2)
METRICS=$(grep -o 'metrics=[^ ]*' "$W/stdout" | cut -d= -f2)
cpu() { awk '{print $14+$15}' /proc/$RPID/stat; }
threads() { for t in /proc/$RPID/task/*; do echo "$(cat $t/comm) $(awk '{print $14+$15}' $t/stat)"; done | sort; }
threads > "$W/threads.before"; C0=$(cpu)
RUST_LOG=error /usr/bin/time -f "%U %S" -o "$W/lg.time" "$L" --target "$LISTEN" --operator-key "$KEY" --genesis-ms $GEN --scenario steady \
  --duration "$DUR" --rate "$RATE" --users 32 --providers 16 --quiet --json "$W/lg.json" \
  > /dev/null 2> "$W/lg.log"
C1=$(cpu); threads > "$W/threads.after"
curl -s "http://$METRICS/metrics" > "$W/metrics.txt"
kill -TERM $RPID; wait $RPID
python3 - "$W" "$C0" "$C1" "$(getconf CLK_TCK)" "$TAG" "$BACKEND" "$RATE" <<'PY'
import json, re, sys
w, c0, c1, hz, tag, backend, rate = sys.argv[1:]
lg_cpu = sum(float(x) for x in open(w + '/lg.time').read().split()[-2:])
unknown_probe = 0
s = json.load(open(w + '/lg.json'))
cpu = (int(c1) - int(c0)) / int(hz)
n = s['sessions_completed']; lat = s['latency_us']['rfc_to_ticket']
ops, samples, ns = {}, {}, {}
for line in open(w + '/metrics.txt'):
    if line.startswith('yellowstone_rejections_total{code="unknown_probe"}'):
        unknown_probe = int(float(line.split()[-1]))
    m = re.match(r'yellowstone_signature_(ops|samples|sampled_cpu_ns)_total\{op="(\w+)"\} (\S+)', line)
    if m:
        {'ops': ops, 'samples': samples, 'sampled_cpu_ns': ns}[m.group(1)][m.group(2)] = float(m.group(3))
work = sum(ops[o] * ns[o] / samples[o] for o in ops if samples.get(o)) / 1e9
def read(path):
    d = {}
    for line in open(path):
        k, v = line.rsplit(' ', 1); k = re.sub(r'-\d+$', '', k); d[k] = d.get(k, 0) + int(v)
    return d
b, a = read(w + '/threads.before'), read(w + '/threads.after')
th = ' '.join(f"{k}={(a[k]-b.get(k,0))/int(hz):.2f}" for k in sorted(a) if a[k] - b.get(k, 0) > 0)
print(f"{tag} {backend} rate={rate} sessions={n} win/s={s['sessions_in_window_per_s']:.0f} "
      f"p50={lat['p50']} p99={lat['p99']} p999={lat['p999']} cpu={cpu:.2f}s "
      f"us/session={cpu*1e6/max(n,1):.1f} selfcheck={s['consistency']['ok']} "
      f"sigwork={work:.2f}s eff_in_situ={work/max(cpu,1e-9):.3f} "
      f"unknown_probe={unknown_probe} loadgen_cpu={lg_cpu:.2f}s | {th}")
PY
