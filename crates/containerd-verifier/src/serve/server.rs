//! The HTTPS server: accept, TLS, HTTP/1.1 (hyper), limits, routes. Decisions are asked of
//! [`Admission`]; this layer only moves bytes, keeps time and counts.
//!
//! Limits, each answered quickly rather than piled up: connections in their TLS handshake and
//! established ones each have their own slots, where a newcomer evicts the holder idle the longest
//! ([`slots`](super::slots): idle sockets cannot starve the API server); handshake, header and
//! body read timeouts (no slowloris), body size, requests in flight and the engine's work
//! queue (HTTP 503 with a reason past either).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::admission::{self, ContainerImage};
use super::decisions::Decided;
use super::gatekeeper;
use super::service::{Admission, Overloaded};
use super::slots::{Busy, Slots, Taken};
use super::tls::{ClientAuth, Tls};

/// The server's own limits and timeouts (flags of `serve`).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Established connections; past it, the one idle the longest is closed.
    pub max_connections: usize,
    /// Connections in their TLS handshake; past it, the oldest one is closed.
    pub max_handshakes: usize,
    pub max_in_flight: usize,
    pub max_body: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Longest a connection stays open (keep-alive included).
    pub connection_lifetime: Duration,
    /// Deadline of one admission review (capped below the API server's `timeout`).
    pub webhook_deadline: Duration,
    /// Deadline of one Gatekeeper provider request (below the Provider's `timeout`).
    pub provider_deadline: Duration,
    pub shutdown_grace: Duration,
    pub reload_interval: Duration,
}

type Body = Full<Bytes>;

/// What every connection shares.
pub struct Shared {
    pub admission: Admission,
    pub tls: Tls,
    pub limits: ServerLimits,
    in_flight: Semaphore,
    handshakes: Arc<Slots>,
    connections: Arc<Slots>,
    draining: AtomicBool,
    /// The watcher's counters, when `serve --watch` runs one (appended to `/metrics`).
    pub watch_health: std::sync::OnceLock<Arc<crate::watch::Health>>,
}

impl Shared {
    pub fn new(admission: Admission, tls: Tls, limits: ServerLimits) -> Shared {
        let in_flight = Semaphore::new(limits.max_in_flight.max(1));
        let (handshakes, connections) = (Slots::always_admitting(limits.max_handshakes), Slots::new(limits.max_connections));
        Shared { admission, tls, limits, in_flight, handshakes, connections, draining: AtomicBool::new(false), watch_health: std::sync::OnceLock::new() }
    }
}

fn json_response(status: StatusCode, value: &Json) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default())));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn text_response(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// A Kubernetes `Status` for errors outside a review (the API server shows its message).
fn status_error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = json_response(status, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": status.as_u16()}));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    }
    response
}

/// The `timeout` query parameter the API server adds to webhook calls (`?timeout=10s`).
fn caller_timeout(uri: &hyper::Uri) -> Option<Duration> {
    let query = uri.query()?;
    let value = query.split('&').find_map(|pair| pair.strip_prefix("timeout="))?;
    crate::config::Span::parse(value).map(|s| s.0)
}

/// The deadline of a request: ours, and well inside the caller's (the API server gives up at
/// its `timeout`; a margin leaves room for the answer to travel).
fn deadline_for(ours: Duration, caller: Option<Duration>, started: Instant) -> Instant {
    let margin = Duration::from_millis(300);
    let budget = caller.map_or(ours, |c| ours.min(c.saturating_sub(margin).max(Duration::from_millis(100))));
    started + budget
}

async fn read_body(request: Request<Incoming>, shared: &Shared) -> Result<Bytes, Response<Body>> {
    let limited = Limited::new(request.into_body(), shared.limits.max_body);
    match tokio::time::timeout(shared.limits.body_timeout, limited.collect()).await {
        Err(_) => Err(status_error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time")),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(status_error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the request body is over {} bytes", shared.limits.max_body)))
            } else {
                Err(status_error(StatusCode::BAD_REQUEST, &format!("the request body could not be read: {e}")))
            }
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// What the connection proved about its client.
#[derive(Clone, Copy)]
struct Peer {
    client_cert: bool,
}

async fn route(request: Request<Incoming>, shared: Arc<Shared>, peer: Peer) -> Response<Body> {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let (name, response): (&'static str, Response<Body>) = match (path.as_str(), &method) {
        ("/healthz", &Method::GET) => ("healthz", text_response(StatusCode::OK, "ok\n".into())),
        ("/readyz", &Method::GET) => ("readyz", readyz(&shared)),
        ("/metrics", &Method::GET) => ("metrics", metrics(&shared)),
        ("/validate" | "/mutate", &Method::POST) => {
            let mutating = path == "/mutate";
            let name = if mutating { "mutate" } else { "validate" };
            (name, with_permit(&shared, || review(request, &shared, mutating, started)).await)
        }
        ("/gatekeeper", &Method::POST) => {
            if shared.tls.client_auth() == Some(ClientAuth::Provider) && !peer.client_cert {
                ("gatekeeper", status_error(StatusCode::FORBIDDEN, "a client certificate from the configured --client-ca is required on this route"))
            } else {
                ("gatekeeper", with_permit(&shared, || provider(request, &shared, started)).await)
            }
        }
        ("/healthz" | "/readyz" | "/metrics" | "/validate" | "/mutate" | "/gatekeeper", _) => {
            ("other", status_error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} is not allowed on {path}")))
        }
        _ => ("other", status_error(StatusCode::NOT_FOUND, "no such route: /validate, /mutate, /gatekeeper, /healthz, /readyz, /metrics")),
    };
    shared.admission.telemetry.request_done(name, started.elapsed());
    response
}

/// Runs `work` holding one of the in-flight permits, or answers 503 at once.
async fn with_permit<F, Fut>(shared: &Shared, work: F) -> Response<Body>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    let Ok(_permit) = shared.in_flight.try_acquire() else {
        shared.admission.telemetry.overloaded();
        return status_error(StatusCode::SERVICE_UNAVAILABLE, "atproto-verifier is overloaded (too many requests in flight); retry");
    };
    shared.admission.telemetry.in_flight(1);
    let response = work().await;
    shared.admission.telemetry.in_flight(-1);
    response
}

/// The Prometheus exposition of the server (and of its watcher, under `serve --watch`).
fn metrics(shared: &Shared) -> Response<Body> {
    let state = super::telemetry::ServerState {
        ready: readiness(shared).is_ok(),
        reload_failing: shared.admission.settings.problem().is_some(),
        certificate_expires: shared.tls.expires(),
    };
    let mut text = shared.admission.telemetry.render(shared.admission.decisions.stats(), &state);
    if let Some(watch) = shared.watch_health.get() {
        text.push_str(&watch.render());
    }
    text_response(StatusCode::OK, text)
}

/// Most connections the metrics listener keeps open (Prometheus needs one or two).
const METRICS_CONNECTIONS: usize = 16;

/// Serves `/metrics` (and `/healthz`) in plain HTTP on `listener` until aborted: a port of its
/// own, so a NetworkPolicy can admit Prometheus to it and only the API server and Gatekeeper
/// to the admission port. Bounded like the admission port: a few connections, header and
/// connection timeouts.
pub async fn run_metrics(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service_shared = Arc::clone(&shared);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let shared = Arc::clone(&service_shared);
                async move {
                    let response = match (request.uri().path(), request.method()) {
                        ("/metrics", &Method::GET) => metrics(&shared),
                        ("/healthz", &Method::GET) => text_response(StatusCode::OK, "ok\n".into()),
                        _ => status_error(StatusCode::NOT_FOUND, "this port serves /metrics and /healthz only"),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(shared.limits.header_timeout).keep_alive(true).max_buf_size(16 * 1024);
            let _ = tokio::time::timeout(shared.limits.connection_lifetime, builder.serve_connection(TokioIo::new(tcp), service)).await;
            drop(permit);
        });
    }
}

fn readiness(shared: &Shared) -> Result<String, String> {
    if shared.draining.load(Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    let loaded = shared.admission.settings.current();
    if let Some(why) = loaded.unready() {
        return Err(why);
    }
    let mut text = format!("ready: policy generation {}\n", loaded.generation);
    if let Some(problem) = shared.admission.settings.problem() {
        text.push_str(&format!("warning: {problem} (the previous config and policy are in force)\n"));
    }
    Ok(text)
}

fn readyz(shared: &Shared) -> Response<Body> {
    match readiness(shared) {
        Ok(text) => text_response(StatusCode::OK, text),
        Err(why) => text_response(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn review(request: Request<Incoming>, shared: &Shared, mutating: bool, started: Instant) -> Response<Body> {
    let deadline = deadline_for(shared.limits.webhook_deadline, caller_timeout(request.uri()), started);
    let body = match read_body(request, shared).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = match admission::parse_review(&body) {
        Ok(request) => request,
        Err(e) => return status_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let images = match admission::requested_images(&request) {
        Ok(images) => images,
        // Unreadable pod specs are denied, never waved through.
        Err(why) => {
            let response = json!({"uid": request.uid, "allowed": false, "status": {"code": 400, "message": format!("atproto-verifier: {why}")}});
            return json_response(StatusCode::OK, &admission::review(response));
        }
    };
    let references: Vec<String> = images.iter().map(|i| i.image.clone()).collect();
    let decided = match shared.admission.decide_all(&references, deadline).await {
        Ok(decided) => decided,
        Err(Overloaded) => return status_error(StatusCode::SERVICE_UNAVAILABLE, "atproto-verifier is overloaded (the decision queue is full); retry"),
    };
    let answers: Vec<(ContainerImage, Arc<Decided>)> = images.into_iter().zip(decided).collect();
    shared.admission.audit_review(&request, &answers, mutating);
    let response = if mutating { admission::mutating_response(&request.uid, &answers) } else { admission::validating_response(&request.uid, &answers) };
    json_response(StatusCode::OK, &admission::review(response))
}

async fn provider(request: Request<Incoming>, shared: &Shared, started: Instant) -> Response<Body> {
    let deadline = started + shared.limits.provider_deadline;
    let body = match read_body(request, shared).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let keys = match gatekeeper::parse_request(&body) {
        Ok(keys) => keys,
        Err(why) => return json_response(StatusCode::BAD_REQUEST, &gatekeeper::system_error(&why)),
    };
    let decided = match shared.admission.decide_all(&keys, deadline).await {
        Ok(decided) => decided,
        Err(Overloaded) => {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &gatekeeper::system_error("atproto-verifier is overloaded (the decision queue is full); retry"),
            );
        }
    };
    shared.admission.audit_keys(&keys, &decided);
    json_response(StatusCode::OK, &gatekeeper::answer(&keys, &decided))
}

/// Completes on SIGTERM or SIGINT (how Kubernetes and systemd stop a server).
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            crate::log::warn(&format!("cannot listen for SIGTERM and SIGINT: {e} — stop this server with SIGKILL"));
            std::future::pending::<()>().await;
        }
    }
}

/// Serves on `listener` until `stop` completes, then drains: stops accepting, answers the
/// requests in flight (for at most the shutdown grace), returns.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, stop: impl std::future::Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let reloader = tokio::spawn(reload_loop(Arc::clone(&shared)));
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (tcp, addr) = match accepted {
            Ok(found) => found,
            Err(e) => {
                // Out of file descriptors and the like: said, and retried after a breath.
                crate::log::warn(&format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A handshake slot always exists: the oldest pending handshake gives up its own.
        let Ok((handshake, taken)) = shared.handshakes.take() else { continue };
        if taken == Taken::Evicted {
            shared.admission.telemetry.evicted("handshake");
        }
        let _ = tcp.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            shared.admission.telemetry.connection(1);
            serve_connection(tcp, addr, &shared, watcher, handshake).await;
            shared.admission.telemetry.connection(-1);
        });
    }
    shared.draining.store(true, Ordering::Relaxed);
    reloader.abort();
    drop(listener);
    crate::log::info(&format!("shutting down: finishing requests in flight (at most {:?})", shared.limits.shutdown_grace));
    if tokio::time::timeout(shared.limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        crate::log::warn("shutdown grace ran out: connections still open were closed");
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
    mut handshake: super::slots::Slot,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.current());
    let speaking = Arc::clone(&handshake.activity);
    let accepting = tokio::time::timeout(shared.limits.handshake_timeout, async move {
        // A client that has spoken is no longer the first to go when slots run short. Bytes
        // must be there (`peek`): a readiness event alone can be spurious, and counted as
        // speech it let silent sockets outrank a genuine client that had just connected.
        if tcp.peek(&mut [0u8; 1]).await.is_ok_and(|n| n > 0) {
            Busy::for_good(&speaking);
        }
        acceptor.accept(tcp).await
    });
    let stream = tokio::select! {
        accepted = accepting => match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                crate::log::debug(&format!("TLS handshake with {addr} failed: {e}"));
                return;
            }
            Err(_) => {
                crate::log::debug(&format!("TLS handshake with {addr} did not finish in time"));
                return;
            }
        },
        _ = &mut handshake.evicted => {
            crate::log::debug(&format!("TLS handshake with {addr} closed: a newer connection needed its slot"));
            return;
        }
    };
    drop(handshake);
    let mut slot = match shared.connections.take() {
        Ok((slot, taken)) => {
            if taken == Taken::Evicted {
                shared.admission.telemetry.evicted("idle");
            }
            slot
        }
        Err(_) => {
            // Every connection is answering a request: this one waits for none of them.
            shared.admission.telemetry.connection_refused();
            return;
        }
    };
    let peer = Peer { client_cert: stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()) };
    let service_shared = Arc::clone(shared);
    let activity = Arc::clone(&slot.activity);
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&service_shared);
        let busy = Busy::new(&activity);
        async move {
            let response = route(request, shared, peer).await;
            drop(busy);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(shared.limits.header_timeout).keep_alive(true).max_buf_size(64 * 1024);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let connection = watcher.watch(connection);
    tokio::select! {
        served = tokio::time::timeout(shared.limits.connection_lifetime, connection) => match served {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(e)) => crate::log::debug(&format!("connection from {addr}: {e}")),
        },
        _ = &mut slot.evicted => crate::log::debug(&format!("idle connection from {addr} closed: a newer connection needed its slot")),
    }
}

/// Reloads config, policy and certificates when their files change.
async fn reload_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.limits.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let work = Arc::clone(&shared);
        // File reads and policy parsing are blocking work: off the reactor.
        let _ = tokio::task::spawn_blocking(move || {
            let before = work.admission.settings.problem();
            match work.admission.settings.reload_if_changed() {
                Some(generation) => {
                    work.admission.telemetry.reloaded(true);
                    work.admission.decisions.retain_generation(generation);
                }
                None => {
                    let after = work.admission.settings.problem();
                    if after.is_some() && after != before {
                        work.admission.telemetry.reloaded(false);
                    }
                }
            }
            if work.tls.reload_if_changed() {
                work.admission.telemetry.tls_reloaded();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_timeout_caps_the_deadline_with_a_margin() {
        let uri: hyper::Uri = "/validate?timeout=10s".parse().unwrap();
        assert_eq!(caller_timeout(&uri), Some(Duration::from_secs(10)));
        let uri: hyper::Uri = "/validate?x=1&timeout=2s".parse().unwrap();
        let start = Instant::now();
        assert_eq!(deadline_for(Duration::from_secs(8), caller_timeout(&uri), start), start + Duration::from_millis(1700));
        assert_eq!(deadline_for(Duration::from_secs(8), Some(Duration::from_secs(30)), start), start + Duration::from_secs(8));
        assert_eq!(deadline_for(Duration::from_secs(8), Some(Duration::from_millis(200)), start), start + Duration::from_millis(100));
        assert_eq!(caller_timeout(&"/validate?timeout=soon".parse().unwrap()), None);
    }
}
