#!/usr/bin/env python3
"""Reconnect storm with CPU per CONNECT (docs/benchmarks.md §2.1).

usage: scripts/storm-cpu.py dg|mq SERVER_BINARY [server args...]

Starts the server (dg: `dualgate serve` on 127.0.0.1:$PORT, data in
/tmp/dgstorm$PORT; mq: mosquitto with a plain listener on $PORT), runs
`$BENCH conn -c $N --rate 0 --hold 2s` against it and prints one line:
the connect rate, the server's CPU (utime + stime from /proc/PID/stat)
from before the bench started to the bench's "connect rate" line, the
bench worker's CPU from its start to the same moment, each per
connection, and the CONNACK latency.

Environment: PORT (21895), N (10000), BENCH (bin/dualbench), BENCHARGS
(more `dualbench conn` flags), SRV_CPU and BENCH_CPU (taskset CPU lists),
STRACE=1 (strace -c the server during the ramp, into /tmp/strace-KIND.txt)
or PERF=1 (perf record it, into /tmp/perf-KIND.data).
"""
import os, re, subprocess, sys, time, shutil, glob

TCK = os.sysconf("SC_CLK_TCK")
N = int(os.environ.get("N", "10000"))
BENCH = os.environ.get("BENCH", "bin/dualbench")
BENCHARGS = os.environ.get("BENCHARGS", "").split()


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    s = s[s.rindex(")") + 2:].split()
    return (int(s[11]) + int(s[12])) / TCK, int(s[11]) / TCK, int(s[12]) / TCK


def children(pid):
    out = []
    for t in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(t) as f:
            out += [int(x) for x in f.read().split()]
    return out


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("VmRSS"):
                return int(l.split()[1])


def main():
    kind, binp = sys.argv[1], sys.argv[2]
    extra = sys.argv[3:]
    port = int(os.environ.get("PORT", "21895"))
    if kind == "dg":
        d = f"/tmp/dgstorm{port}"
        shutil.rmtree(d, ignore_errors=True)
        cmd = [binp, "serve", "--plain", f"127.0.0.1:{port}", "--tls", f"127.0.0.1:{port+7000}",
               "--api", f"127.0.0.1:{port+6000}", "--data", d, "--log-level", "warn"] + extra
    else:
        conf = f"/tmp/mqstorm{port}.conf"
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\nmax_connections -1\n")
        cmd = [binp, "-c", conf]
    if os.environ.get("SRV_CPU"):
        cmd = ["taskset", "-c", os.environ["SRV_CPU"]] + cmd
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/storm-{kind}.err", "w"))
    try:
        time.sleep(1.5)
        if srv.poll() is not None:
            print("server died", srv.returncode); return
        c0 = cpu(srv.pid)
        r0 = rss(srv.pid)
        t0 = time.time()
        tr = None
        if os.environ.get("STRACE"):
            tr = subprocess.Popen(["strace", "-c", "-f", "-p", str(srv.pid), "-o", f"/tmp/strace-{kind}.txt"])
            time.sleep(1)
        if os.environ.get("PERF"):
            tr = subprocess.Popen(["perf", "record", "-F", "2999", "-g", "-p", str(srv.pid), "-o", f"/tmp/perf-{kind}.data"], stderr=subprocess.DEVNULL)
            time.sleep(1)
        pre = ["taskset", "-c", os.environ["BENCH_CPU"]] if os.environ.get("BENCH_CPU") else []
        b = subprocess.Popen(pre + [BENCH, "conn", "--host", "127.0.0.1", "--port", str(port), "-c", str(N),
                              "--rate", "0", "--hold", "2s"] + BENCHARGS,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # the worker pids, found once they exist
        wk = []
        wc0 = {}
        rate = None
        out = []
        for line in b.stdout:
            out.append(line)
            if not wk:
                wk = children(b.pid)
            if line.startswith("connect rate") and rate is None:
                c1 = cpu(srv.pid)
                r1 = rss(srv.pid)
                bc = cpu(b.pid)
                wcs = [cpu(w) for w in wk if os.path.exists(f"/proc/{w}")]
                rate = line
                if tr:
                    tr.send_signal(2); tr.wait()
        b.wait()
        m = re.search(r"connect rate\s+([\d.]+) conn/s \((\d+) in ([\d.]+) s\)", rate or "")
        conns = int(m.group(2)); r = float(m.group(1)); secs = float(m.group(3))
        srvcpu = c1[0] - c0[0]
        wcpu = sum(w[0] for w in wcs)
        ack = [l for l in out if l.startswith("CONNACK")]
        print(f"{kind:3s} rate {r:8.0f} conn/s n={conns} ramp={secs:.2f}s  server cpu {srvcpu:.2f}s "
              f"(u {c1[1]-c0[1]:.2f} s {c1[2]-c0[2]:.2f}) = {srvcpu/conns*1e6:.0f} us/conn  "
              f"bench cpu {wcpu:.2f}s (whole, workers since start) = {wcpu/conns*1e6:.0f} us/conn  "
              f"rss +{(r1-r0)/1024:.1f} MiB  {ack[0].strip() if ack else ''}  load {os.getloadavg()[0]:.2f}")
        sys.stdout.flush()
    finally:
        srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill(); srv.wait()


main()
