//! `serve`: the node's decisions for Kubernetes admission, over HTTPS. One process answers
//! a validating and a mutating `AdmissionReview` webhook (`/validate`, `/mutate`) and
//! Gatekeeper's external data provider (`/gatekeeper`), with `/healthz`, `/readyz` and
//! `/metrics`. Every decision is `engine::decide`'s, on the engine's worker threads.
//!
//! Layers: [`server`] (accept, TLS, HTTP, limits, routes) → [`service`] (a request's images
//! decided by a deadline; audit) → [`decisions`] (cache, single flight) and [`pool`] (the
//! worker threads) → the engine. The request and answer shapes are [`admission`] and
//! [`gatekeeper`], pure functions over JSON.

pub mod admission;
pub mod decisions;
pub mod gatekeeper;
pub mod pool;
pub mod server;
pub mod service;
pub mod settings;
pub mod slots;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::Span;
use decisions::Decisions;
use pool::{Pool, RemoteFactory};
use server::{ServerLimits, Shared};
use service::Admission;
use settings::{Settings, Sources};
use telemetry::Telemetry;
use tls::{ClientAuth, Tls, TlsFiles};

fn span(text: &str) -> Result<Duration, String> {
    Span::parse(text).map(|s| s.0).ok_or_else(|| format!("{text:?} is not a duration such as \"500ms\", \"8s\" or \"1m\""))
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM); reloaded when it changes.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// Server private key (PEM); reloaded when it changes.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// CA (PEM) that client certificates must chain to (Gatekeeper presents its webhook certificate).
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca: which requests must present a client certificate.
    #[arg(long, value_enum, default_value = "provider")]
    pub client_auth: ClientAuth,
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Use this trust policy instead of the one config.toml names.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Engine worker threads (decisions wait on the network most of the time).
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Decisions that may wait for a worker; past it, requests are answered 503 at once.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Requests answered at once; past it, 503 at once.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Established connections; past it, the oldest one with no request in flight is closed
    /// (a new one is refused only when every connection is answering a request).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections still in their TLS handshake; past it, the oldest that has sent nothing is
    /// closed (else the oldest).
    #[arg(long, default_value_t = 256)]
    pub max_handshakes: usize,
    /// Time a client has to finish its TLS handshake.
    #[arg(long, default_value = "2s", value_parser = span)]
    pub handshake_timeout: Duration,
    /// Largest request body, in bytes (an AdmissionReview carries the whole object).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_body: usize,
    /// Deadline of an admission review (further capped by the API server's `?timeout=`).
    #[arg(long, default_value = "8s", value_parser = span)]
    pub webhook_deadline: Duration,
    /// Deadline of a Gatekeeper provider request: keep it below the Provider's `timeout`.
    #[arg(long, default_value = "2500ms", value_parser = span)]
    pub provider_deadline: Duration,
    /// How long a decision is answered from memory (at most the config's proof_ttl; undecided
    /// answers are never kept).
    #[arg(long, default_value = "30s", value_parser = span)]
    pub decision_ttl: Duration,
    /// Most decisions kept in memory.
    #[arg(long, default_value_t = 10_000)]
    pub decision_cache: usize,
    /// How often the config, policy and certificate files are checked for changes.
    #[arg(long, default_value = "2s", value_parser = span)]
    pub reload_interval: Duration,
    /// How long requests in flight may take to finish after SIGTERM.
    #[arg(long, default_value = "20s", value_parser = span)]
    pub shutdown_grace: Duration,
    /// Time a client has to send a request's headers (and to start the next one on a kept-alive connection).
    #[arg(long, default_value = "10s", value_parser = span)]
    pub header_timeout: Duration,
    /// Also serve `/metrics` (and `/healthz`) in plain HTTP on this address, a port of its own
    /// that a NetworkPolicy can open to Prometheus alone (`/metrics` stays on the HTTPS port too).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Run the `watch` service inside the server (the config's `watch_source`): a revoked
    /// record drops the in-memory decisions of its signer at once, not after --decision-ttl.
    #[arg(long)]
    pub watch: bool,
}

impl ServeArgs {
    fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            max_in_flight: self.max_in_flight,
            max_body: self.max_body,
            handshake_timeout: self.handshake_timeout,
            header_timeout: self.header_timeout,
            body_timeout: self.header_timeout,
            connection_lifetime: Duration::from_secs(600),
            webhook_deadline: self.webhook_deadline,
            provider_deadline: self.provider_deadline,
            shutdown_grace: self.shutdown_grace,
            reload_interval: self.reload_interval,
        }
    }
}

/// Everything a server needs, built (files read, threads started), not yet listening.
pub fn build(args: &ServeArgs, world: RemoteFactory) -> Result<Arc<Shared>, String> {
    let settings = Settings::load(Sources { config: args.config.clone(), policy: args.policy.clone() })?;
    if let Some(why) = settings.current().unready() {
        crate::log::warn(&format!("{why} — /readyz answers 503 and every image is refused until a policy loads"));
    }
    let tls = Tls::new(TlsFiles { cert: args.tls_cert.clone(), key: args.tls_key.clone(), client_ca: args.client_ca.clone(), client_auth: args.client_auth })?;
    let decisions = Arc::new(Decisions::new(args.decision_cache));
    let telemetry = Arc::new(Telemetry::default());
    let pool = Pool::start(args.workers, args.queue, args.decision_ttl, Arc::clone(&decisions), Arc::clone(&telemetry), world)
        .map_err(|e| format!("cannot start worker threads: {e}"))?;
    let decision_deadline = args.webhook_deadline.max(args.provider_deadline);
    let admission = Admission { decision_deadline, settings, decisions, pool, telemetry };
    Ok(Arc::new(Shared::new(admission, tls, args.limits())))
}

/// The HTTP layer's runtime: two reactor threads (accept, TLS, HTTP only; the engine has its
/// own threads).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("serve-io").enable_all().build()
}

/// `atproto-verifier serve`.
pub fn run(args: ServeArgs) -> u8 {
    let fail = |message: String| {
        crate::log::log(crate::log::Level::Error, &message, &[]);
        crate::exit::UNDECIDED
    };
    let world: RemoteFactory = Arc::new(crate::remote::system::system);
    let shared = match build(&args, world) {
        Ok(shared) => shared,
        Err(e) => return fail(format!("cannot start: {e}")),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the HTTP runtime: {e}")),
    };
    let watcher = if args.watch { start_watcher(&args, &shared) } else { None };
    let code = runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {}: {e}", args.listen)),
        };
        crate::log::info(&format!(
            "serving on https://{} (/validate, /mutate, /gatekeeper, /healthz, /readyz, /metrics); {} workers",
            args.listen, args.workers
        ));
        let metrics = match args.metrics_listen {
            None => None,
            Some(at) => match tokio::net::TcpListener::bind(at).await {
                Ok(l) => {
                    crate::log::info(&format!("metrics on http://{at}/metrics"));
                    Some(tokio::spawn(server::run_metrics(l, Arc::clone(&shared))))
                }
                Err(e) => return fail(format!("cannot listen on {at} (--metrics-listen): {e}")),
            },
        };
        server::run(listener, shared, server::termination()).await;
        if let Some(task) = metrics {
            task.abort();
        }
        crate::exit::ADMITTED
    });
    if let Some((watcher, thread)) = watcher {
        watcher.stop();
        let _ = thread.join();
    }
    code
}

/// The watcher inside the server: the generation in force's config and policy (it reloads the
/// policy file itself); each DID whose cached proofs change has its decisions dropped.
fn start_watcher(args: &ServeArgs, shared: &Arc<Shared>) -> Option<(Arc<crate::watch::Watcher>, std::thread::JoinHandle<()>)> {
    let loaded = shared.admission.settings.current();
    let Ok(policy) = loaded.policy.clone() else {
        crate::log::warn("watch: not started: no trust policy loaded (restart once it loads)");
        return None;
    };
    let mut config = loaded.config.clone();
    if let Some(policy) = &args.policy {
        config.policy.clone_from(policy);
    }
    let decisions = Arc::clone(&shared.admission.decisions);
    let watcher = Arc::new(crate::watch::system(config, policy).on_change(move |did| {
        let dropped = decisions.evict_signer(did);
        if dropped > 0 {
            crate::log::info(&format!("watch: {dropped} decisions resting on {did} dropped from memory"));
        }
    }));
    let _ = shared.watch_health.set(watcher.health());
    let running = Arc::clone(&watcher);
    let thread = std::thread::spawn(move || running.run(None));
    crate::log::info("watch: running inside the server");
    Some((watcher, thread))
}

/// A server running on its own threads (tests and benchmarks drive one in-process).
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, drains as on SIGTERM, and waits for the server to return.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Asks the server to stop without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds a server over `world` and serves on `args.listen` (port 0: any) on new threads.
pub fn start(args: &ServeArgs, world: RemoteFactory) -> Result<Running, String> {
    let shared = build(args, world)?;
    let runtime = runtime().map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    let std_listener = std::net::TcpListener::bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("serve".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else { return };
                server::run(listener, serving, async move {
                    let _ = stopped.await;
                })
                .await;
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(Running { addr, shared, stop: Some(stop), thread: Some(thread) })
}
