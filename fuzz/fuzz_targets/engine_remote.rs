#![no_main]
//! The whole decision engine, driven by arbitrary remote answers through an in-memory `Fetch`
//! and `Resolve`: PLC documents and audit logs, PDS proofs and record lists, handle
//! well-knowns, registry referrers, DNS TXT records, and the stdin descriptor. Each exchange
//! gets, as the input chooses, the genuine answer of a real signed world, that answer cut or
//! with a byte flipped, arbitrary bytes, an HTTP status, or a network failure. Never a panic,
//! and a network failure is never reported as a signature verdict.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::policy::Policy;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, T0_MICROS, TestRepo, digest_of};
use atproto_sig_core::Reason;
use containerd_verifier::config::Config;
use containerd_verifier::engine::{self, Request};
use containerd_verifier::remote::{Deadline, DnsError, Exchange, Fetch, Fetched, InFlight, NetError, Remote, Resolve};
use containerd_verifier::testkit::query;
use libfuzzer_sys::fuzz_target;

const PLC: &str = "https://plc.test";

/// The genuine answers of one signed world, by URL without query, and the facts to ask about.
struct World {
    routes: HashMap<String, Vec<u8>>,
    did: String,
    handle: String,
    digest: String,
    policy: Policy,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let identity = Identity::new(Curve::K256, "fuzz");
        let mut repo = TestRepo::new(identity.clone());
        let digest = digest_of("fuzz");
        let rkey = repo.put_manifest(&digest, "app");
        repo.put_filler(8);
        let mut routes = HashMap::new();
        routes.insert(format!("{PLC}/{}", identity.did), identity.did_document_multikey().into_bytes());
        routes.insert(format!("{PLC}/{}/log/audit", identity.did), identity.audit_log().into_bytes());
        let proof = format!("{}/xrpc/com.atproto.sync.getRecord?{}", identity.pds, query(&[("did", &identity.did), ("collection", MANIFEST_COLLECTION), ("rkey", &rkey)]));
        routes.insert(proof, repo.proof(MANIFEST_COLLECTION, &rkey));
        let list = format!("{}/xrpc/com.atproto.repo.listRecords", identity.pds);
        let record = serde_json::json!({"records": [{"uri": format!("at://{}/{MANIFEST_COLLECTION}/{rkey}", identity.did), "value": {"digest": digest, "repository": "app"}}]});
        routes.insert(list, record.to_string().into_bytes());
        routes.insert(format!("https://{}/.well-known/atproto-did", identity.handle), identity.did.clone().into_bytes());
        let policy = Policy::parse(&format!(
            "version: 1.0\ntrustedDIDs:\n  {}: {{ name: fuzz }}\npolicies:\n  - name: all\n    scope: \"**\"\n    require: {{ signature: true }}\n    action: enforce\n",
            identity.did
        ))
        .expect("the fuzz policy parses");
        World { routes, did: identity.did, handle: identity.handle, digest, policy }
    })
}

/// Reads the fuzz input as a sequence of choices; exhausted, it chooses the genuine answer.
/// Remembers whether any answer was other than genuine or a network failure.
struct Choices {
    data: Vec<u8>,
    at: AtomicUsize,
    tampered: AtomicBool,
}

impl Choices {
    fn byte(&self) -> Option<u8> {
        self.data.get(self.at.fetch_add(1, Ordering::Relaxed)).copied()
    }

    fn u16(&self) -> usize {
        usize::from(self.byte().unwrap_or(0)) << 8 | usize::from(self.byte().unwrap_or(0))
    }

    fn bytes(&self, n: usize) -> Vec<u8> {
        let start = self.at.load(Ordering::Relaxed).min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.at.store(end, Ordering::Relaxed);
        self.data.get(start..end).unwrap_or_default().to_vec()
    }
}

struct FuzzFetch {
    choices: Arc<Choices>,
}

impl Fetch for FuzzFetch {
    fn exchange(&self, x: &Exchange<'_>) -> Result<Fetched, NetError> {
        let without_query = x.url.split('?').next().unwrap_or(x.url);
        let genuine = world().routes.get(x.url).or_else(|| world().routes.get(without_query)).cloned();
        let status = |c: Option<u8>| [200, 200, 404, 400, 500, 301, 429][usize::from(c.unwrap_or(0)) % 7];
        let choice = self.choices.byte().map(|b| b % 6);
        if !matches!(choice, None | Some(0) | Some(4)) {
            self.choices.tampered.store(true, Ordering::Relaxed);
        }
        let (status, mut body) = match choice {
            None | Some(0) => match genuine {
                Some(body) => (200, body),
                None => (404, b"{\"error\":\"NotFound\"}".to_vec()),
            },
            Some(1) => {
                let mut body = genuine.unwrap_or_default();
                body.truncate(self.choices.u16());
                (200, body)
            }
            Some(2) => {
                let mut body = genuine.unwrap_or_default();
                let at = self.choices.u16();
                let flip = self.choices.byte().unwrap_or(1) | 1;
                if let Some(b) = body.get_mut(at) {
                    *b ^= flip;
                }
                (200, body)
            }
            Some(3) => {
                let n = self.choices.u16();
                (status(self.choices.byte()), self.choices.bytes(n))
            }
            Some(4) => return Err(NetError::Connect("refused".into())),
            Some(_) => (status(self.choices.byte()), Vec::new()),
        };
        if body.len() > x.limit {
            return Err(NetError::TooLarge(x.limit));
        }
        if x.method == "HEAD" {
            body.clear();
        }
        Ok(Fetched { status, headers: vec![("content-type".into(), "application/json".into())], body })
    }
}

struct FuzzResolve {
    choices: Arc<Choices>,
}

impl Resolve for FuzzResolve {
    fn txt(&self, _name: &str, _timeout: Duration) -> Result<Vec<String>, DnsError> {
        let choice = self.choices.byte().map(|b| b % 4);
        if matches!(choice, Some(2)) {
            self.choices.tampered.store(true, Ordering::Relaxed);
        }
        match choice {
            None | Some(0) => Ok(vec![format!("did={}", world().did)]),
            Some(1) => Ok(Vec::new()),
            Some(2) => {
                let n = usize::from(self.choices.byte().unwrap_or(0));
                Ok(vec![String::from_utf8_lossy(&self.choices.bytes(n)).into_owned()])
            }
            Some(_) => Err(DnsError::NoServer),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let choices = Arc::new(Choices { data: data.to_vec(), at: AtomicUsize::new(0), tampered: AtomicBool::new(false) });
    let flags = choices.byte().unwrap_or(0);
    // tmpfs when there is one: the cache fsyncs every entry it writes.
    let shm = std::path::Path::new("/dev/shm");
    let Ok(dir) = (if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }) else { return };
    let config = Config {
        cache_dir: dir.path().join("cache"),
        plc_directory: PLC.into(),
        containerd_hosts_dir: dir.path().join("certs.d"),
        docker_config: Some(dir.path().join("absent.json")),
        atproto_registries: vec!["atcr.test".into()],
        strict_plc: flags & 1 != 0,
        ..Config::default()
    };
    let reference = match (flags >> 1) & 3 {
        0 => "registry.test/team/app:1".to_owned(),
        1 => format!("atcr.test/{}/app:1", world.handle),
        2 => format!("registry.test/team/app@{}", world.digest),
        _ => {
            choices.tampered.store(true, Ordering::Relaxed);
            let n = usize::from(choices.byte().unwrap_or(0));
            String::from_utf8_lossy(&choices.bytes(n)).into_owned()
        }
    };
    let descriptor = if flags & 8 != 0 {
        choices.tampered.store(true, Ordering::Relaxed);
        let n = choices.u16() & 0x3ff;
        choices.bytes(n)
    } else {
        format!(r#"{{"digest":"{}"}}"#, world.digest).into_bytes()
    };
    let remote = Remote::new(Arc::new(FuzzFetch { choices: Arc::clone(&choices) }), Arc::new(FuzzResolve { choices: Arc::clone(&choices) }));
    let request = Request {
        reference: &reference,
        digest: Some(&world.digest),
        descriptor: Some(&descriptor),
        policy: Ok(&world.policy),
        config: &config,
        now_micros: T0_MICROS + 60_000_000,
        deadline: Deadline::after(Duration::from_secs(8)),
        in_flight: &InFlight::default(),
    };
    let answer = engine::decide(&request, &remote);
    // Genuine answers and network failures only: admitted, or undecided for the network's
    // sake; never a verdict about signatures or records.
    if !choices.tampered.load(Ordering::Relaxed) {
        assert!(
            matches!(answer.decision.reason, Reason::Verified | Reason::NetworkError | Reason::DeadlineExceeded),
            "{}: {}",
            answer.decision.reason,
            answer.decision.message
        );
    }
});
