#!/usr/bin/env python3
"""A real pull decision, end to end, on loopback: the reference PDS + PLC directory, Debian's
docker-registry, an image pushed there, its io.atcr.manifest record written to the pusher's
ATProto repository, and atproto-verifier exec'd exactly as containerd 2.x execs it."""
import json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import Loopback

VERIFIER = shutil.which("atproto-verifier") or sys.exit("atproto-verifier is not on PATH (cargo install --path crates/containerd-verifier)")

env = Loopback(extra_config='proof_ttl = "0s"\n')
try:
    print(f"PDS {env.pds}, PLC directory {env.plc}, registry {env.host}\n")

    def pull():
        start = time.time()
        p = subprocess.run(env.pull_args(VERIFIER), input=env.descriptor(), capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "ATPROTO_VERIFIER_CONFIG": env.config}, timeout=10)
        print(f"$ atproto-verifier -name {env.name} -digest {env.digest[:19]}… -stdin-media-type application/vnd.oci.descriptor.v1+json")
        print(f"  exit {p.returncode} ({'pull admitted' if p.returncode == 0 else 'pull blocked'}) in {int((time.time()-start)*1000)} ms; containerd shows: {p.stdout.strip()}\n")
        return p.returncode

    print("containerd pulls the signed image:")
    ok = pull() == 0
    print("the pusher deletes the record (revokes the image); the next pull:")
    env.delete_record()
    revoked = pull() == 1
    print(f"audit log ({env.work}/audit.jsonl):")
    with open(os.path.join(env.work, "audit.jsonl")) as f:
        for line in f:
            r = json.loads(line); print(f"  {r['outcome']:<10} {r['reason']:<16} requests={r['requests']} {r['durationMs']} ms")
    sys.exit(0 if ok and revoked else 1)
finally:
    env.close()
