//! The event-stream components the `watch` tests and the revocation benchmark run: indigo's
//! relay and the legacy Jetstream, from target/tools (tests/firehose/install.sh).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::harness::{self, env};

/// indigo's relay (target/tools, built by tests/firehose/install.sh) in front of the reference
/// PDS, on SQLite. `requestCrawl` refuses loopback hosts, so the PDS is written into the
/// relay's host table and the relay restarted.
pub struct Relay {
    pub url: String,
    _guard: harness::Guard,
    _dir: tempfile::TempDir,
}

pub fn tool(name: &str) -> std::path::PathBuf {
    let tools = harness::repo_root().join("target/tools");
    std::fs::read_dir(&tools)
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-")))))
        .map(|dir| dir.join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is missing from target/tools: run tests/firehose/install.sh (needs Go)"))
}

pub fn wait_port(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Relay {
    pub fn start() -> Relay {
        let binary = tool("relay");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.sqlite");
        let port = harness::free_port();
        let run = || {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("relay.log")).unwrap();
            let child = std::process::Command::new(&binary)
                .args(["--admin-password", "test-admin", "--plc-host", &env().pds.plc, "serve", "--db-url"])
                .arg(format!("sqlite://{}", db.display()))
                .arg("--persist-dir")
                .arg(dir.path().join("persist"))
                .args(["--bind", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{}", harness::free_port()), "--allow-insecure-hosts"])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot start the relay");
            harness::Guard(Some(child))
        };
        let mut first = run();
        wait_port(port, "the relay");
        first.stop();
        let host = env().pds.pds.trim_start_matches("http://").replace("127.0.0.1", "localhost");
        let insert = format!(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"insert into host(created_at,updated_at,hostname,no_ssl,account_limit,trusted,status,last_seq,account_count) values(datetime('now'),datetime('now'),?,1,1000,1,'active',-1,0)\", (sys.argv[2],)); c.commit()"
        );
        let status = std::process::Command::new("python3").args(["-c", &insert]).arg(&db).arg(&host).status().expect("python3 is required");
        assert!(status.success(), "registering the PDS in the relay's host table failed");
        let guard = run();
        wait_port(port, "the relay");
        Relay { url: format!("ws://127.0.0.1:{port}"), _guard: guard, _dir: dir }
    }
}

/// The legacy Jetstream (target/tools), reading the reference PDS directly.
pub struct Jetstream {
    pub port: u16,
    _guard: harness::Guard,
    _dir: tempfile::TempDir,
}

impl Jetstream {
    pub fn start() -> Jetstream {
        let binary = tool("jetstream");
        let dir = tempfile::tempdir().unwrap();
        let port = harness::free_port();
        let log = std::fs::File::create(dir.path().join("jetstream.log")).unwrap();
        let child = std::process::Command::new(binary)
            .env("JETSTREAM_WS_URL", format!("{}/xrpc/com.atproto.sync.subscribeRepos", env().pds.pds.replace("http://", "ws://")))
            .env("JETSTREAM_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("JETSTREAM_METRICS_LISTEN_ADDR", format!("127.0.0.1:{}", harness::free_port()))
            .env("JETSTREAM_DATA_DIR", dir.path().join("data"))
            // Its default (15 s without events, then exit) would stop it on a quiet test PDS.
            .env("JETSTREAM_LIVENESS_TTL", "24h")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start Jetstream");
        let guard = harness::Guard(Some(child));
        wait_port(port, "Jetstream");
        Jetstream { port, _guard: guard, _dir: dir }
    }
}
