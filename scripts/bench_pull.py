#!/usr/bin/env python3
"""Benchmarks of whole pull decisions (the binary as containerd runs it), on loopback:
warm cache (DID document and proof cached), and cold online (empty cache: DID document from the
PLC directory, handle resolution, referrers lookup, proof from the PDS). Wall time with
hyperfine; peak RSS and request counts from the runs themselves. Usage: python3 scripts/bench_pull.py"""
import json, os, shutil, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import Loopback

VERIFIER = shutil.which("atproto-verifier") or sys.exit("atproto-verifier is not on PATH")
HYPERFINE = shutil.which("hyperfine") or sys.exit("hyperfine is missing: apt-get install hyperfine")

env = Loopback(extra_config='did_ttl = "1h"\nproof_ttl = "1h"\n')
try:
    descriptor = os.path.join(env.work, "descriptor.json")
    with open(descriptor, "w") as f:
        f.write(env.descriptor())
    command = " ".join(env.pull_args(VERIFIER)) + f" < {descriptor} > /dev/null"
    os.environ["ATPROTO_VERIFIER_CONFIG"] = env.config
    cache = os.path.join(env.work, "cache")

    TIME = shutil.which("time", path="/usr/bin") or sys.exit("GNU time is missing: apt-get install time")

    def one_run(clear):
        """Peak RSS (KiB) of one verifier process, measured by GNU time (a small C parent: a
        Python parent's pages would be counted in the child's ru_maxrss until exec)."""
        if clear:
            shutil.rmtree(cache, ignore_errors=True)
        with open(descriptor) as stdin:
            p = subprocess.run([TIME, "-f", "%M"] + env.pull_args(VERIFIER), stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert p.returncode == 0, p.stderr
        return int(p.stderr.strip().splitlines()[-1])

    cold_rss = max(one_run(True) for _ in range(5))
    warm_rss = max(one_run(False) for _ in range(5))
    results = {}
    for label, prepare in [("warm", None), ("cold", f"rm -rf {cache}")]:
        out = os.path.join(env.work, f"{label}.json")
        args = [HYPERFINE, "--warmup", "3", "--runs", "50", "--export-json", out, "-N" if prepare is None else "--shell=sh", command]
        if prepare:
            args[1:1] = ["--prepare", prepare]
        if prepare is None:
            args = [HYPERFINE, "--warmup", "3", "--runs", "50", "--export-json", out, "--shell=sh", command]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            r = json.load(f)["results"][0]
        results[label] = r
    one_run(True)
    with open(os.path.join(env.work, "audit.jsonl")) as f:
        audit = [json.loads(l) for l in f]
    warm_requests = sorted({a["requests"] + a["registryRequests"] for a in audit[5:10]})
    cold_requests = audit[-1]["requests"] + audit[-1]["registryRequests"]
    for label in ("warm", "cold"):
        r = results[label]
        print(f"{label}: mean {r['mean']*1000:.1f} ms ± {r['stddev']*1000:.1f} ms, median {r['median']*1000:.1f} ms, min {r['min']*1000:.1f} ms, max {r['max']*1000:.1f} ms ({len(r['times'])} runs)")
    print(f"peak RSS: warm {warm_rss/1024:.1f} MiB, cold {cold_rss/1024:.1f} MiB (GNU time %M of the verifier process)")
    print(f"requests per decision: warm {warm_requests}, cold {cold_requests}")
finally:
    env.close()
