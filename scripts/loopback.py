#!/usr/bin/env python3
"""Loopback environment shared by scripts/demo.py and scripts/bench_pull.py: the reference PDS +
PLC directory (npm), Debian's docker-registry, an image pushed there by alice.test with its
io.atcr.manifest record, and a verifier config + trust policy for it."""
import hashlib, json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def req(method, url, body=None, headers=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    r = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if body is not None and not isinstance(body, bytes):
        r.add_header("content-type", "application/json")
    with urllib.request.urlopen(r, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

class Loopback:
    """Starts everything; `close()` stops it. Attributes: work, pds, plc, host, did, token,
    digest, rkey, name, manifest, config."""

    def __init__(self, extra_config=""):
        self.procs = []
        self.work = work = tempfile.mkdtemp(prefix="atproto-verifier-")
        procs = self.procs
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
        # A real tar layer, so containerd can unpack the image (scripts/bench_containerd.py).
        import io, tarfile
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            content = b"hello from the demo layer\n"; info = tarfile.TarInfo("hello.txt"); info.size = len(content); info.mtime = 0
            t.addfile(info, io.BytesIO(content))
        layer = buf.getvalue()
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
        cd, cs = blob(config); ld, ls = blob(layer)
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
                    f'plc_directory = "{plc}"\nhandle_resolver = "{pds}"\natproto_registries = ["{host}"]\n' + extra_config)


        self.pds, self.plc, self.host, self.did, self.token = pds, plc, host, did, token
        self.digest, self.rkey, self.manifest = digest, rkey, manifest
        self.name = f"{host}/{repo}:v1"
        self.config = os.path.join(work, "config.toml")

    def pull_args(self, verifier):
        return [verifier, "-name", self.name, "-digest", self.digest, "-stdin-media-type", "application/vnd.oci.descriptor.v1+json"]

    def descriptor(self):
        return json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": self.digest, "size": len(self.manifest)})

    def delete_record(self):
        req("POST", f"{self.pds}/xrpc/com.atproto.repo.deleteRecord", {"repo": self.did, "collection": "io.atcr.manifest", "rkey": self.rkey}, {"authorization": f"Bearer {self.token}"})

    def close(self):
        for p in self.procs:
            p.terminate()
        shutil.rmtree(self.work, ignore_errors=True)
