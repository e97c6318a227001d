//! The real [`Subscribe`]: a blocking WebSocket client (tungstenite does the framing) over our
//! own TCP connection and, for `wss`, rustls with the node's trust roots. Plain `ws` only to
//! loopback addresses, as plain `http`. Every wait is bounded: connect and handshake by the
//! subscribe timeout, each read by the timeout its caller gives; a message over the limit ends
//! the stream.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::http::is_loopback_host;
use super::ureq::TrustRoots;
use super::{Frame, NetError, Stream, Subscribe};

/// Largest message accepted on any stream (the sync spec's frame limit, 5 MiB).
const MAX_MESSAGE: usize = atproto_sig_core::firehose::MAX_FRAME_BYTES;

/// Subscribes over the network.
pub struct WsSubscribe {
    roots: Arc<TrustRoots>,
}

impl WsSubscribe {
    pub fn new(roots: TrustRoots) -> WsSubscribe {
        WsSubscribe { roots: Arc::new(roots) }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, NetError> {
        let mut store = rustls::RootCertStore::empty();
        for certificate in self.roots.get().certificates.iter() {
            let _ = store.add(rustls::pki_types::CertificateDer::from(certificate.der().to_vec()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NetError::Connect(format!("TLS: {e}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// A plain or TLS connection.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// `(tls, host, port)` of a ws/wss URL.
fn target(url: &str) -> Result<(bool, String, u16), NetError> {
    let bad = || NetError::BadUrl(crate::limits::short(url, 200));
    let (tls, rest) = match url.split_once("://") {
        Some(("wss", rest)) => (true, rest),
        Some(("ws", rest)) => (false, rest),
        _ => return Err(bad()),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    if !tls && !is_loopback_host(authority) {
        return Err(NetError::BadUrl(format!("{}: plain ws only to loopback addresses; use wss", crate::limits::short(url, 200))));
    }
    let (host, port) = match authority.rsplit_once(':').filter(|(h, p)| !p.is_empty() && !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit())) {
        Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    Ok((tls, host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

fn io_error(url: &str, e: &std::io::Error) -> NetError {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => NetError::Timeout(crate::limits::short(url, 200)),
        _ => NetError::Connect(format!("{}: {e}", crate::limits::short(url, 200))),
    }
}

impl Subscribe for WsSubscribe {
    fn subscribe(&self, url: &str, timeout: Duration) -> Result<Box<dyn Stream>, NetError> {
        let (tls, host, port) = target(url)?;
        // The system resolver has no timeout of its own: asked on a thread, waited for only
        // as long as the subscribe timeout (a stuck lookup leaves one thread behind, no more).
        let (tx, rx) = std::sync::mpsc::channel();
        let lookup = host.clone();
        std::thread::spawn(move || {
            let _ = tx.send((lookup.as_str(), port).to_socket_addrs().map(|mut a| a.next()));
        });
        let address = match rx.recv_timeout(timeout) {
            Ok(Ok(Some(address))) => address,
            Ok(Ok(None)) => return Err(NetError::Connect(format!("{host}: no address"))),
            Ok(Err(e)) => return Err(NetError::Connect(format!("{host}: {e}"))),
            Err(_) => return Err(NetError::Timeout(format!("resolving {host}"))),
        };
        let tcp = TcpStream::connect_timeout(&address, timeout).map_err(|e| io_error(url, &e))?;
        let control = tcp.try_clone().map_err(|e| io_error(url, &e))?;
        control.set_read_timeout(Some(timeout)).map_err(|e| io_error(url, &e))?;
        control.set_write_timeout(Some(timeout)).map_err(|e| io_error(url, &e))?;
        let _ = tcp.set_nodelay(true);
        let conn = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| NetError::BadUrl(format!("{host}: {e}")))?;
            let session = rustls::ClientConnection::new(self.tls_config()?, name).map_err(|e| NetError::Connect(format!("TLS: {e}")))?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
        } else {
            Conn::Plain(tcp)
        };
        let config = tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
        let (socket, response) = tungstenite::client::client_with_config(url, conn, Some(config)).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => NetError::Connect(format!("{}: {e}", crate::limits::short(url, 200))),
            tungstenite::HandshakeError::Interrupted(_) => NetError::Timeout(crate::limits::short(url, 200)),
        })?;
        if response.status().as_u16() != 101 {
            return Err(NetError::Io(format!("{}: HTTP {} instead of a WebSocket upgrade", crate::limits::short(url, 200), response.status().as_u16())));
        }
        Ok(Box::new(WsStream { socket, control, url: url.to_owned() }))
    }
}

struct WsStream {
    socket: tungstenite::WebSocket<Conn>,
    /// The same socket, to set each read's timeout.
    control: TcpStream,
    url: String,
}

impl Stream for WsStream {
    fn next(&mut self, timeout: Duration, limit: usize) -> Result<Option<Frame>, NetError> {
        let _ = self.control.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        loop {
            match self.socket.read() {
                Ok(tungstenite::Message::Binary(bytes)) if bytes.len() > limit => return Err(NetError::TooLarge(limit)),
                Ok(tungstenite::Message::Text(text)) if text.len() > limit => return Err(NetError::TooLarge(limit)),
                Ok(tungstenite::Message::Binary(bytes)) => return Ok(Some(Frame::Binary(bytes.to_vec()))),
                Ok(tungstenite::Message::Text(text)) => return Ok(Some(Frame::Text(text.as_str().to_owned()))),
                // Pings are answered by tungstenite on the next read or flush.
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) | tungstenite::Message::Frame(_)) => {}
                Ok(tungstenite::Message::Close(_)) => return Ok(None),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(None),
                Err(tungstenite::Error::Capacity(_)) => return Err(NetError::TooLarge(limit)),
                Err(tungstenite::Error::Io(e)) => return Err(io_error(&self.url, &e)),
                Err(e) => return Err(NetError::Connect(format!("{}: {e}", crate::limits::short(&self.url, 200)))),
            }
        }
    }

    fn send_text(&mut self, text: &str) -> Result<(), NetError> {
        self.socket.send(tungstenite::Message::text(text)).map_err(|e| match e {
            tungstenite::Error::Io(e) => io_error(&self.url, &e),
            e => NetError::Connect(format!("{}: {e}", crate::limits::short(&self.url, 200))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_the_loopback_rule() {
        assert_eq!(target("wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos").unwrap(), (true, "bsky.network".into(), 443));
        assert_eq!(target("ws://127.0.0.1:2583/xrpc/x?cursor=5").unwrap(), (false, "127.0.0.1".into(), 2583));
        assert_eq!(target("ws://[::1]:6008/subscribe").unwrap(), (false, "::1".into(), 6008));
        assert!(target("ws://relay.example/xrpc/x").is_err(), "plain ws to a name");
        assert!(target("https://relay.example/").is_err());
        assert!(target("wss://user:pw@relay.example/").is_err());
        assert!(target("wss:///x").is_err());
    }
}
