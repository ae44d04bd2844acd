#!/usr/bin/env python3
"""Builds benches/RESULTS.md from one benches/harness/run.sh run (CSV files of the shared
harness, same machine, same run for egret and the peers).

usage: results.py WORKDIR > benches/RESULTS.md
"""
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys

work = sys.argv[1]


def rows(name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r.get("status") == "ok"]


def pick(rs, kind, target, mode="SIMPLE", body="44b"):
    return [r for r in rs if r["kind"] == kind and r["target"] == target
            and r["mode"] == mode and r["body"] == body]


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def cpu_us(r):
    n = int(r["requests"])
    t = r["proxy_cpu_ticks"]
    if not n or t in ("", None):
        return None
    return int(t) / int(r["clk_tck"]) * 1e6 / n


def rps(r):
    return int(r["requests"]) / (int(r["dur_us"]) / 1e6)


def p99_ms(r):
    return int(r["p99_us"]) / 1000


def vcpu_per_krps(r):
    t = r["proxy_cpu_ticks"]
    if t in ("", None):
        return None
    cpu_s = int(t) / int(r["clk_tck"])
    wall = int(r["dur_us"]) / 1e6
    return cpu_s / wall / (rps(r) / 1000)


def f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


run1, run2, run3 = rows("run1.csv"), rows("run2.csv"), rows("run3.csv")
PEERS = ["nginx", "haproxy"]


def metric(rs, target, fn, kind="keepalive", mode="SIMPLE", body="44b"):
    return med([fn(r) for r in pick(rs, kind, target, mode, body)])


def added_p99(rs, target):
    d = metric(run1, "direct", p99_ms, "rate")
    t = metric(rs, target, p99_ms, "rate")
    return None if d is None or t is None else t - d


def hwm_mib(rs, target):
    v = [int(r["proxy_hwm_kb"]) / 1024 for r in rs
         if r["target"] == target and r["kind"] == "keepalive" and r["proxy_hwm_kb"]]
    return max(v) if v else None


def idle_mib(rs, target, field):
    v = [int(r[field]) / 1024 for r in rs if r["target"] == target and r[field]]
    return med(v)


cases = [
    # (label, fn(rs, target), better, factor-or-absolute, target text)
    ("keep-alive SIMPLE, 44 B body: proxy CPU µs per request",
     lambda rs, t: metric(rs, t, cpu_us), "lower", 0.7, "≤ 0.7 × the better peer"),
    ("keep-alive SIMPLE, 16 KiB body: proxy CPU µs per request",
     lambda rs, t: metric(rs, t, cpu_us, body="16k"), "lower", 0.8, "≤ 0.8 × the better peer"),
    ("keep-alive MUTUAL, 44 B: requests/s",
     lambda rs, t: metric(rs, t, rps, mode="MUTUAL"), "higher", 1.2, "≥ 1.2 × the better peer"),
    ("fresh upstream connection per request (NEWCONN): requests/s",
     lambda rs, t: metric(rs, t, rps, kind="newconn"), "higher", 2.0, "≥ 2 × the better peer"),
    ("~1000 rps, 16 connections: latency added at p99 (ms)",
     lambda rs, t: added_p99(rs, t), "abs", 0.2, "≤ 0.2 ms"),
    ("~1000 rps: vCPU per 1000 rps",
     lambda rs, t: metric(rs, t, vcpu_per_krps, kind="rate"), "abs", 0.05, "≤ 0.05"),
    ("idle memory (MiB; peers PSS, egret RSS)",
     lambda rs, t: idle_mib(rs, t, "proxy_idle_pss_kb" if t in PEERS else "proxy_idle_rss_kb"),
     "abs", 6.0, "≤ 6 MiB RSS"),
    ("peak RSS during the 32-connection runs (MiB)",
     lambda rs, t: hwm_mib(rs, t), "abs", 12.0, "≤ 12 MiB"),
]

out = []
w = out.append
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
cpu = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
ncpu = os.cpu_count()
kernel = platform.release()


def version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


w("# egret vs nginx and HAProxy: measured results")
w("")
w(f"Measured {now} on {ncpu} vCPU ({cpu}), kernel {kernel}, with "
  f"`benches/harness/run.sh` (the shared harness `../shared/bench`, egret as its subject). "
  f"{version(['nginx', '-v'])}; {version(['haproxy', '-v'])}. Every figure in a row comes "
  "from the same run. egret ran with one worker thread (`--concurrency 1`, as the peers' one "
  "worker) and its access log **on**, written to a file (Istio's default TEXT format), i.e. a "
  "production configuration. The load generator, the proxy and the origin share the 2 vCPUs, "
  "so compare CPU per request; rps is bounded by the box.")
w("")
w("| case (wrk -t1 -c32, loopback) | nginx | HAProxy | egret | egret, log off | target | met? |")
w("|---|--:|--:|--:|--:|---|---|")
summary = []
for label, fn, better, k, text in cases:
    vals = {t: fn(run1, t) for t in PEERS}
    vals["egret"] = fn(run1, "subject")
    nolog = fn(run2, "subject") if run2 else None
    peer = [vals[t] for t in PEERS if vals[t] is not None]
    ok = None
    e = vals["egret"]
    if e is not None:
        if better == "lower" and peer:
            ok = e <= k * min(peer)
        elif better == "higher" and peer:
            ok = e >= k * max(peer)
        elif better == "abs":
            ok = e <= k
    # Added latency is a proxied percentile minus the direct one. When the direct baseline's
    # tail came out above a proxied path's (noise on a shared box), the difference says nothing.
    noisy = "latency added" in label and any(
        v is not None and v < 0 for v in [e, nolog] + peer)
    fmt = "{:.3f}" if "vCPU" in label or "latency" in label else (
        "{:,.0f}" if "requests/s" in label else "{:.1f}")
    ratio = ""
    if peer and e is not None and better in ("lower", "higher"):
        best = min(peer) if better == "lower" else max(peer)
        ratio = f" ({e / best:.2f}×)"
    met = "yes" if ok else ("no" if ok is not None else "-")
    if noisy:
        d = metric(run1, "direct", p99_ms, "rate")
        met = (f"not measurable in this run (the direct baseline's p99, {d:.3f} ms, was above "
               "a proxied path's)")
        ok = None
    w(f"| {label} | {f(vals['nginx'], fmt)} | {f(vals['haproxy'], fmt)} | "
      f"{f(e, fmt)}{ratio} | {f(nolog, fmt)} | {text} | "
      f"{met} |")
    summary.append((label, ok))

noresume = metric(run3, "subject", rps, kind="newconn") if run3 else None
noresume_cpu = metric(run3, "subject", cpu_us, kind="newconn") if run3 else None
w("")
w(f"NEWCONN with TLS session resumption **off** (`--no-tls-resumption`, every upstream "
  f"handshake full, as the peers are configured): {f(noresume, '{:,.0f}')} requests/s, "
  f"{f(noresume_cpu)} µs CPU per request.")
idle = ""
try:
    idle = open(os.path.join(work, "idle.txt")).read().strip()
except OSError:
    pass
w("")
w(f"10,000 idle keep-alive client connections (`benches/harness/idle-connections.py`): "
  f"`{idle or 'not measured'}` (target: ≤ 64 MiB in total).")
w("")
try:
    w(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")).read())
except OSError:
    pass
w("## Full tables of the run (harness report)")
w("")
try:
    w(open(os.path.join(work, "run1.md")).read())
except OSError:
    w("(run1.md missing)")
print("\n".join(out))
