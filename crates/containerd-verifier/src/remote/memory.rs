//! In-memory doubles of the world (feature `testkit`; never in the release binary): a web
//! answering by URL, DNS answering by name, and streams of frames by URL. Every exchange is
//! logged, so tests can assert what was (not) requested; answers can be delayed, and a delayed
//! answer honours the exchange's timeout as a real client does, so deadline tests need no
//! socket.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{DnsError, Exchange, Fetch, Fetched, Frame, NetError, Resolve, Stream, Subscribe};

/// Locks `m`, even if a panicking test thread poisoned it (the doubles hold plain data).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits `delay`, or the exchange's own timeout if that is shorter (then: a timeout error).
fn wait(delay: Duration, timeout: Duration, url: &str) -> Result<(), NetError> {
    if delay.is_zero() {
        return Ok(());
    }
    std::thread::sleep(delay.min(timeout));
    if delay > timeout { Err(NetError::Timeout(url.to_owned())) } else { Ok(()) }
}

/// An in-memory web: answers by exact URL (query string included), or by URL without its
/// query, else 404.
#[derive(Default)]
pub struct MemoryFetch {
    routes: Mutex<HashMap<String, Result<Fetched, NetError>>>,
    delays: Mutex<HashMap<String, Duration>>,
    log: Mutex<Vec<String>>,
}

impl MemoryFetch {
    pub fn new() -> MemoryFetch {
        MemoryFetch::default()
    }

    /// Answers `url` with `status` and `body`.
    pub fn serve(&self, url: &str, status: u16, body: impl Into<Vec<u8>>) {
        lock(&self.routes).insert(url.to_owned(), Ok(Fetched { status, headers: Vec::new(), body: body.into() }));
    }

    /// Answers `url` with `status`, `headers` and `body`.
    pub fn serve_with_headers(&self, url: &str, status: u16, headers: Vec<(String, String)>, body: impl Into<Vec<u8>>) {
        lock(&self.routes).insert(url.to_owned(), Ok(Fetched { status, headers, body: body.into() }));
    }

    /// Fails every exchange with `url` this way.
    pub fn fail(&self, url: &str, error: NetError) {
        lock(&self.routes).insert(url.to_owned(), Err(error));
    }

    /// Answers `url` only after `delay` (or times out first, as the exchange's timeout says);
    /// `"*"` delays every URL without a delay of its own.
    pub fn delay(&self, url: &str, delay: Duration) {
        lock(&self.delays).insert(url.to_owned(), delay);
    }

    /// The URLs requested so far, in order.
    pub fn requested(&self) -> Vec<String> {
        lock(&self.log).clone()
    }
}

impl Fetch for MemoryFetch {
    fn exchange(&self, exchange: &Exchange<'_>) -> Result<Fetched, NetError> {
        lock(&self.log).push(exchange.url.to_owned());
        let without_query = exchange.url.split('?').next().unwrap_or(exchange.url);
        let delay = {
            let delays = lock(&self.delays);
            delays.get(exchange.url).or_else(|| delays.get(without_query)).or_else(|| delays.get("*")).copied().unwrap_or_default()
        };
        wait(delay, exchange.timeout, without_query).map_err(|e| if exchange.deadline.expired() { NetError::Deadline } else { e })?;
        let answer = {
            let routes = lock(&self.routes);
            routes.get(exchange.url).or_else(|| routes.get(without_query)).cloned()
        };
        match answer {
            Some(Ok(response)) if response.body.len() > exchange.limit => Err(NetError::TooLarge(exchange.limit)),
            Some(Ok(response)) if exchange.method == "HEAD" => Ok(Fetched { body: Vec::new(), ..response }),
            Some(answer) => answer,
            None => Ok(Fetched { status: 404, headers: Vec::new(), body: b"{\"error\":\"NotFound\"}".to_vec() }),
        }
    }
}

/// In-memory DNS: TXT records by name; unknown names are NXDOMAIN.
#[derive(Default)]
pub struct MemoryResolve {
    records: Mutex<HashMap<String, Result<Vec<String>, DnsError>>>,
    delay: Mutex<Duration>,
}

impl MemoryResolve {
    pub fn new() -> MemoryResolve {
        MemoryResolve::default()
    }

    pub fn serve(&self, name: &str, records: Vec<String>) {
        lock(&self.records).insert(name.to_owned(), Ok(records));
    }

    pub fn fail(&self, name: &str, error: DnsError) {
        lock(&self.records).insert(name.to_owned(), Err(error));
    }

    /// Every answer comes after `delay` (or the question's timeout, then: a failure).
    pub fn delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }
}

impl Resolve for MemoryResolve {
    fn txt(&self, name: &str, timeout: Duration) -> Result<Vec<String>, DnsError> {
        if timeout.is_zero() {
            return Err(DnsError::NoTime);
        }
        let delay = *lock(&self.delay);
        wait(delay, timeout, name).map_err(|e| DnsError::Failed { server: "memory".into(), problem: e.to_string() })?;
        lock(&self.records).get(name).cloned().unwrap_or(Ok(Vec::new()))
    }
}

/// In-memory streams: each subscription to a URL gets the frames queued for it, in order;
/// then the stream ends (`close_after`) or waits for more until its timeout.
#[derive(Default)]
pub struct MemorySubscribe {
    streams: Mutex<HashMap<String, (Vec<Frame>, bool)>>,
    log: Mutex<Vec<String>>,
    sent: Arc<Mutex<Vec<(String, String)>>>,
}

impl MemorySubscribe {
    pub fn new() -> MemorySubscribe {
        MemorySubscribe::default()
    }

    /// The frames every subscription to `url` receives; `close_after`: the source then
    /// closes the stream (else it stays open and silent).
    pub fn serve(&self, url: &str, frames: Vec<Frame>, close_after: bool) {
        lock(&self.streams).insert(url.to_owned(), (frames, close_after));
    }

    /// The URLs subscribed to so far, in order.
    pub fn subscribed(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// The text messages sent on streams so far: (url, text).
    pub fn sent(&self) -> Vec<(String, String)> {
        lock(&self.sent).clone()
    }
}

struct MemoryStream {
    frames: VecDeque<Frame>,
    close_after: bool,
    url: String,
    sent: Arc<Mutex<Vec<(String, String)>>>,
}

impl Stream for MemoryStream {
    fn next(&mut self, timeout: Duration, limit: usize) -> Result<Option<Frame>, NetError> {
        match self.frames.pop_front() {
            Some(Frame::Binary(b)) if b.len() > limit => Err(NetError::TooLarge(limit)),
            Some(Frame::Text(t)) if t.len() > limit => Err(NetError::TooLarge(limit)),
            Some(frame) => Ok(Some(frame)),
            None if self.close_after => Ok(None),
            None => {
                std::thread::sleep(timeout);
                Err(NetError::Timeout(self.url.clone()))
            }
        }
    }

    fn send_text(&mut self, text: &str) -> Result<(), NetError> {
        lock(&self.sent).push((self.url.clone(), text.to_owned()));
        Ok(())
    }
}

impl Subscribe for MemorySubscribe {
    fn subscribe(&self, url: &str, _timeout: Duration) -> Result<Box<dyn Stream>, NetError> {
        lock(&self.log).push(url.to_owned());
        match lock(&self.streams).get(url) {
            Some((frames, close_after)) => {
                Ok(Box::new(MemoryStream { frames: frames.iter().cloned().collect(), close_after: *close_after, url: url.to_owned(), sent: self.sent.clone() }))
            }
            None => Err(NetError::Connect(format!("{url}: connection refused"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_deliver_in_order_and_bound_frames() {
        let subscribe = MemorySubscribe::new();
        subscribe.serve("wss://relay.test/x", vec![Frame::Text("a".into()), Frame::Binary(vec![0; 10]), Frame::Text("b".into())], true);
        let mut stream = subscribe.subscribe("wss://relay.test/x", Duration::from_secs(1)).unwrap();
        assert_eq!(stream.next(Duration::from_millis(1), 100).unwrap(), Some(Frame::Text("a".into())));
        assert_eq!(stream.next(Duration::from_millis(1), 5), Err(NetError::TooLarge(5)));
        assert_eq!(stream.next(Duration::from_millis(1), 100).unwrap(), Some(Frame::Text("b".into())));
        assert_eq!(stream.next(Duration::from_millis(1), 100).unwrap(), None);
        assert!(subscribe.subscribe("wss://other.test/", Duration::from_secs(1)).is_err());
        assert_eq!(subscribe.subscribed().len(), 2);
        subscribe.serve("wss://silent.test/", Vec::new(), false);
        let mut silent = subscribe.subscribe("wss://silent.test/", Duration::from_secs(1)).unwrap();
        assert!(matches!(silent.next(Duration::from_millis(5), 100), Err(NetError::Timeout(_))));
    }

    #[test]
    fn delayed_answers_honour_the_exchange_timeout() {
        let web = MemoryFetch::new();
        web.serve("https://slow.test/x", 200, "ok");
        web.delay("https://slow.test/x", Duration::from_millis(200));
        let tls = super::super::Tls::default();
        let exchange = |timeout| Exchange {
            method: "GET",
            url: "https://slow.test/x",
            headers: &[],
            body: None,
            tls: &tls,
            timeout,
            deadline: super::super::Deadline::after(Duration::from_secs(5)),
            limit: 10,
        };
        let started = std::time::Instant::now();
        assert!(matches!(web.exchange(&exchange(Duration::from_millis(20))), Err(NetError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_millis(150));
        assert_eq!(web.exchange(&exchange(Duration::from_secs(1))).unwrap().body, b"ok");
    }
}
