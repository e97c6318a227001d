#!/usr/bin/env python3
"""A real pull decision, end to end, on loopback: the reference PDS + PLC directory, Debian's
docker-registry, an image pushed there, its io.atcr.manifest record written to the pusher's
ATProto repository, and atproto-verifier exec'd exactly as containerd 2.x execs it."""
import hashlib, json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERIFIER = shutil.which("atproto-verifier") or sys.exit("atproto-verifier is not on PATH (cargo install --path crates/containerd-verifier)")

def req(method, url, body=None, headers=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    r = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if body is not None and not isinstance(body, bytes):
        r.add_header("content-type", "application/json")
    with urllib.request.urlopen(r, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

work = tempfile.mkdtemp(prefix="atproto-verifier-demo-")
procs = []
try:
    # 1. The reference PDS and PLC directory (npm packages, in-memory PLC), on 127.0.0.1.
    pds_proc = subprocess.Popen(["node", os.path.join(ROOT, "tests/pds/servers.cjs"), os.path.join(work, "pds")], stdout=subprocess.PIPE, text=True)
    procs.append(pds_proc)
    line = pds_proc.stdout.readline()
    urls = json.loads(line.split(" ", 1)[1]); pds, plc = urls["pds"], urls["plc"]
    # 2. docker-registry (distribution 2.8) on 127.0.0.1.
    port = free_port(); host = f"127.0.0.1:{port}"
    with open(os.path.join(work, "registry.yml"), "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\nhttp:\n  addr: {host}\n")
    procs.append(subprocess.Popen(["docker-registry", "serve", os.path.join(work, "registry.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close(); break
        except OSError:
            time.sleep(0.05)
    print(f"PDS {pds}, PLC directory {plc}, registry {host}\n")

    # 3. An account (alice.test, a real did:plc) and an image pushed to the registry.
    acct = json.loads(req("POST", f"{pds}/xrpc/com.atproto.server.createAccount", {"handle": "alice.test", "email": "alice@example.com", "password": "demo-password"})[2])
    did, token = acct["did"], acct["accessJwt"]
    repo = "alice.test/hello"
    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, h, _ = req("POST", f"http://{host}/v2/{repo}/blobs/uploads/", b"")
        loc = h["Location"]; loc = loc if loc.startswith("http") else f"http://{host}{loc}"
        req("PUT", f"{loc}{'&' if '?' in loc else '?'}digest={digest}", data, {"content-type": "application/octet-stream"})
        return digest, len(data)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cd, cs = blob(config); ld, ls = blob(b"hello from the demo layer")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
    req("PUT", f"http://{host}/v2/{repo}/manifests/v1", manifest, {"content-type": "application/vnd.oci.image.manifest.v1+json"})
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    # 4. What an ATProto registry does on push: an io.atcr.manifest record in the pusher's repo.
    rkey = digest.split(":")[1]
    req("POST", f"{pds}/xrpc/com.atproto.repo.createRecord", {"repo": did, "collection": "io.atcr.manifest", "rkey": rkey, "validate": False,
        "record": {"$type": "io.atcr.manifest", "repository": "hello", "digest": digest, "mediaType": "application/vnd.oci.image.manifest.v1+json", "schemaVersion": 2, "createdAt": "2026-11-22T00:00:00.000Z"}},
        {"authorization": f"Bearer {token}"})

    # 5. The node's configuration: trust alice's DID for everything on this registry.
    with open(os.path.join(work, "trust-policy.yaml"), "w") as f:
        f.write(f"version: 1.0\ntrustedDIDs:\n  {did}:\n    name: \"Alice\"\n    validFrom: \"2025-01-01T00:00:00Z\"\n    expiresAt: null\n"
                f"policies:\n  - name: demo-registry\n    scope: \"{host}/**\"\n    require: {{ signature: true }}\n    action: enforce\n"
                "default: { action: enforce, require: { signature: true } }\n")
    with open(os.path.join(work, "config.toml"), "w") as f:
        f.write(f'policy = "{work}/trust-policy.yaml"\ncache_dir = "{work}/cache"\naudit_log = "{work}/audit.jsonl"\n'
                f'plc_directory = "{plc}"\nhandle_resolver = "{pds}"\natproto_registries = ["{host}"]\nproof_ttl = "0s"\n')

    def pull(name, digest):
        args = [VERIFIER, "-name", name, "-digest", digest, "-stdin-media-type", "application/vnd.oci.descriptor.v1+json"]
        env = {"PATH": "/usr/bin:/bin", "ATPROTO_VERIFIER_CONFIG": os.path.join(work, "config.toml")}
        start = time.time()
        p = subprocess.run(args, input=json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest)}), capture_output=True, text=True, env=env, timeout=10)
        print(f"$ atproto-verifier -name {name} -digest {digest[:19]}… -stdin-media-type application/vnd.oci.descriptor.v1+json")
        print(f"  exit {p.returncode} ({'pull admitted' if p.returncode == 0 else 'pull blocked'}) in {int((time.time()-start)*1000)} ms; containerd shows: {p.stdout.strip()}\n")
        return p.returncode

    name = f"{host}/{repo}:v1"
    print("containerd pulls the signed image:")
    ok = pull(name, digest) == 0
    print("the pusher deletes the record (revokes the image); the next pull:")
    req("POST", f"{pds}/xrpc/com.atproto.repo.deleteRecord", {"repo": did, "collection": "io.atcr.manifest", "rkey": rkey}, {"authorization": f"Bearer {token}"})
    revoked = pull(name, digest) == 1
    print(f"audit log ({work}/audit.jsonl):")
    with open(os.path.join(work, "audit.jsonl")) as f:
        for line in f:
            r = json.loads(line); print(f"  {r['outcome']:<10} {r['reason']:<16} requests={r['requests']} {r['durationMs']} ms")
    sys.exit(0 if ok and revoked else 1)
finally:
    for p in procs:
        p.terminate()
    shutil.rmtree(work, ignore_errors=True)
