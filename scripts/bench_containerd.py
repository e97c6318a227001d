#!/usr/bin/env python3
"""What the verifier adds to a real pull: `ctr image pull` (transfer service) of a small image
from a loopback registry through the real containerd 2.4, with an empty bin_dir (no verifier)
and with atproto-verifier, its cache warm and cold. Median of N runs each (hyperfine, the image
removed before every run, which hyperfine does not time). Usage:
    python3 scripts/bench_containerd.py [RUNS]        (root; after tests/containerd/install.sh)"""
import json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import Loopback, ROOT

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
VERSION = os.environ.get("CONTAINERD_VERSION", "v2.4.2")
TOOLS = os.path.join(ROOT, "target/tools", f"containerd-{VERSION}")
HYPERFINE = shutil.which("hyperfine") or sys.exit("hyperfine is missing: apt-get install hyperfine")
VERIFIER = os.path.join(ROOT, "target/release/atproto-verifier")
if not os.path.exists(VERIFIER):
    sys.exit("build it first: cargo build --release")
if not os.path.exists(os.path.join(TOOLS, "containerd")):
    sys.exit("run tests/containerd/install.sh first")

env = Loopback(extra_config='did_ttl = "1h"\nproof_ttl = "1h"\n')
procs = []
try:
    work = tempfile.mkdtemp(prefix="bench-containerd-")
    for d in ["root", "state", "opt", "hosts/" + env.host, "bin-none", "bin-verifier"]:
        os.makedirs(os.path.join(work, d))
    shutil.copy(VERIFIER, os.path.join(work, "bin-verifier/atproto-verifier"))
    with open(os.path.join(work, "hosts", env.host, "hosts.toml"), "w") as f:
        f.write(f'server = "http://{env.host}"\n[host."http://{env.host}"]\n  capabilities = ["pull", "resolve"]\n')

    def start(bin_dir):
        for d in ["root", "state"]:
            shutil.rmtree(os.path.join(work, d)); os.makedirs(os.path.join(work, d))
        config = os.path.join(work, "config.toml")
        with open(config, "w") as f:
            f.write(f'version = 3\nroot = "{work}/root"\nstate = "{work}/state"\nimports = []\n'
                    'disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]\n'
                    f'[grpc]\n  address = "{work}/state/c.sock"\n[ttrpc]\n  address = "{work}/state/c.sock.ttrpc"\n'
                    f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{work}/opt"\n'
                    f'[plugins."io.containerd.image-verifier.v1.bindir"]\n  bin_dir = "{work}/{bin_dir}"\n  per_verifier_timeout = "10s"\n'
                    f'[plugins."io.containerd.transfer.v1.local"]\n  config_path = "{work}/hosts"\n'
                    '  [[plugins."io.containerd.transfer.v1.local".unpack_config]]\n    platform = "linux/amd64"\n    snapshotter = "native"\n')
        p = subprocess.Popen([os.path.join(TOOLS, "containerd"), "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "ATPROTO_VERIFIER_CONFIG": env.config})
        procs.append(p)
        for _ in range(300):
            if os.path.exists(f"{work}/state/c.sock"):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        return p

    ctr = f"{TOOLS}/ctr --address {work}/state/c.sock"
    pull = f"{ctr} image pull --hosts-dir {work}/hosts {env.name} > /dev/null 2>&1"
    remove = f"{ctr} image rm {env.name} > /dev/null 2>&1; true"
    cache = os.path.join(env.work, "cache")
    results = {}
    for label, bin_dir, prepare in [
        ("no verifier", "bin-none", remove),
        ("verifier, warm cache", "bin-verifier", remove),
        ("verifier, cold cache", "bin-verifier", f"{remove}; rm -rf {cache}"),
    ]:
        p = start(bin_dir)
        subprocess.run(pull, shell=True, check=True)  # warms the cache and containerd itself
        out = os.path.join(work, "out.json")
        subprocess.run([HYPERFINE, "--runs", str(RUNS), "--warmup", "2", "--prepare", prepare, "--export-json", out, "--style", "none", pull], check=True)
        r = json.load(open(out))["results"][0]
        results[label] = r
        p.terminate(); p.wait()
    for label, r in results.items():
        print(f"{label:22} median {r['median']*1000:7.1f} ms   mean {r['mean']*1000:7.1f} ± {r['stddev']*1000:5.1f} ms   ({len(r['times'])} runs)")
    base = results["no verifier"]["median"]
    for label in ["verifier, warm cache", "verifier, cold cache"]:
        print(f"added by the verifier ({label.split(', ')[1]}): {(results[label]['median'] - base) * 1000:.1f} ms (median)")
finally:
    for p in procs:
        p.terminate()
    env.close()
