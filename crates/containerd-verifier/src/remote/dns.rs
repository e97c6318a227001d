//! The TXT records of one name (`_atproto.<handle>`): DNS messages encoded and decoded by
//! hickory-proto (its resolver needs an async runtime; this is one blocking question), sent over
//! UDP to the nameservers of /etc/resolv.conf (or `$ATPROTO_VERIFIER_DNS`, `ip:port`, for
//! tests), retried over TCP when the answer is truncated, with a timeout, a random query id
//! checked on the answer, and size caps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::{DnsError, Resolve};

fn nameservers() -> Vec<SocketAddr> {
    if let Some(addr) = std::env::var("ATPROTO_VERIFIER_DNS").ok().and_then(|s| s.parse().ok()) {
        return vec![addr];
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .take(3)
        .collect()
}

/// Encodes a recursive query for `name` TXT with id `id`.
pub fn encode_query(name: &str, id: u16) -> Option<Vec<u8>> {
    let name = Name::from_ascii(name).ok()?;
    if name.is_empty() {
        return None;
    }
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, RecordType::TXT));
    message.to_vec().ok()
}

/// What a nameserver answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The TXT records (each record's strings joined); none for NXDOMAIN.
    Records(Vec<String>),
    /// The answer did not fit in UDP: ask again over TCP.
    Truncated,
}

/// Parses the answer to query `id`.
pub fn parse_response(buf: &[u8], id: u16) -> Result<Answer, DnsError> {
    let malformed = |problem: String| DnsError::Malformed(problem);
    let message = Message::from_vec(buf).map_err(|e| malformed(format!("malformed DNS answer: {e}")))?;
    if message.metadata.id != id {
        return Err(malformed("DNS answer for another query".to_owned()));
    }
    if message.metadata.message_type != MessageType::Response {
        return Err(malformed("not a DNS response".to_owned()));
    }
    if message.metadata.truncation {
        return Ok(Answer::Truncated);
    }
    match message.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Answer::Records(Vec::new())),
        code => return Err(malformed(format!("DNS error: {code}"))),
    }
    let records = message
        .answers
        .iter()
        .take(64)
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(String::from_utf8_lossy(&txt.txt_data.iter().flat_map(|part| part.iter().copied()).collect::<Vec<u8>>()).into_owned()),
            _ => None,
        })
        .collect();
    Ok(Answer::Records(records))
}

/// The system's nameservers (or `$ATPROTO_VERIFIER_DNS`), as a [`Resolve`]; no question
/// waits longer than `timeout` (config.toml `connect_timeout`).
pub struct SystemResolve {
    timeout: Duration,
    /// Read once, on the first question (a new `Remote` reads them again).
    servers: std::sync::OnceLock<Vec<SocketAddr>>,
}

impl SystemResolve {
    /// Asks each question for at most `timeout` (or less, as the caller says).
    pub fn new(timeout: Duration) -> SystemResolve {
        SystemResolve { timeout, servers: std::sync::OnceLock::new() }
    }
}

impl Resolve for SystemResolve {
    fn txt(&self, name: &str, timeout: Duration) -> Result<Vec<String>, DnsError> {
        lookup_txt_at(self.servers.get_or_init(nameservers), name, timeout.min(self.timeout))
    }
}

/// One question over UDP.
fn ask_udp(server: SocketAddr, query: &[u8], id: u16, timeout: Duration) -> Result<Answer, String> {
    let bind = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    socket.connect(server).map_err(|e| e.to_string())?;
    socket.send(query).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).map_err(|e| format!("{server}: {e}"))?;
    parse_response(buf.get(..n).unwrap_or_default(), id).map_err(|e| e.to_string())
}

/// One question over TCP (two-byte length prefix each way), within `timeout` in all.
fn ask_tcp(server: SocketAddr, query: &[u8], id: u16, timeout: Duration) -> Result<Answer, String> {
    let started = Instant::now();
    let left = || timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&server, timeout).map_err(|e| format!("{server} (TCP): {e}"))?;
    stream.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long")?;
    stream.write_all(&len.to_be_bytes()).and_then(|()| stream.write_all(query)).map_err(|e| format!("{server} (TCP): {e}"))?;
    stream.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).map_err(|e| format!("{server} (TCP): {e}"))?;
    let size = usize::from(u16::from_be_bytes(prefix)).min(crate::limits::NodeLimits::DEFAULT.dns_tcp_answer);
    let mut buf = vec![0u8; size];
    stream.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
    stream.read_exact(&mut buf).map_err(|e| format!("{server} (TCP): {e}"))?;
    match parse_response(&buf, id).map_err(|e| e.to_string())? {
        Answer::Truncated => Err(format!("{server}: truncated even over TCP")),
        answer => Ok(answer),
    }
}

/// Same, asking the given nameservers in order.
pub fn lookup_txt_at(servers: &[SocketAddr], name: &str, timeout: Duration) -> Result<Vec<String>, DnsError> {
    if timeout.is_zero() {
        return Err(DnsError::NoTime);
    }
    let id = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) ^ std::process::id()) as u16;
    let query = encode_query(name, id).ok_or_else(|| DnsError::BadName(crate::limits::short(name, 300)))?;
    let mut last = DnsError::NoServer;
    for &server in servers {
        let result = ask_udp(server, &query, id, timeout).and_then(|answer| match answer {
            Answer::Truncated => ask_tcp(server, &query, id, timeout),
            records => Ok(records),
        });
        match result {
            Ok(Answer::Records(records)) => return Ok(records),
            Ok(Answer::Truncated) => last = DnsError::Failed { server: server.to_string(), problem: "truncated".to_owned() },
            Err(problem) => last = DnsError::Failed { server: server.to_string(), problem },
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::TXT;

    /// A response to `query` (its id and question) with these TXT records.
    fn answer(query: &[u8], txt: &[&[u8]], truncated: bool) -> Vec<u8> {
        let question = Message::from_vec(query).unwrap();
        let mut response = Message::new(question.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.truncation = truncated;
        response.add_query(question.queries[0].clone());
        if !truncated {
            let name = question.queries[0].name().clone();
            response.add_answer(Record::from_rdata(name, 60, RData::TXT(TXT::from_bytes(txt.to_vec()))));
        }
        response.to_vec().unwrap()
    }

    #[test]
    fn parses_txt_answers_and_rejects_garbage() {
        let query = encode_query("_atproto.alice.test", 7).unwrap();
        let buf = answer(&query, &[b"did=did:plc:", b"abc"], false);
        assert_eq!(parse_response(&buf, 7), Ok(Answer::Records(vec!["did=did:plc:abc".to_owned()])));
        assert!(parse_response(&buf, 8).is_err(), "another query's id");
        assert!(parse_response(&query, 7).is_err(), "a query is not a response");
        assert_eq!(parse_response(&answer(&query, &[], true), 7), Ok(Answer::Truncated));
        for cut in 0..buf.len() {
            let _ = parse_response(&buf[..cut], 7); // never panics
        }
        assert!(encode_query("a..b", 1).is_none());
    }

    #[test]
    fn queries_a_loopback_server_and_falls_back_to_tcp_on_truncation() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            server.send_to(&answer(&buf[..n], &[b"did=did:plc:ewvi7nxzyoun6zhxrhs64oiz"], false), peer).unwrap();
        });
        let records = lookup_txt_at(&[addr], "_atproto.alice.test", Duration::from_secs(2)).unwrap();
        assert_eq!(records, vec!["did=did:plc:ewvi7nxzyoun6zhxrhs64oiz".to_owned()]);
        handle.join().unwrap();

        // A truncated UDP answer: the same question again over TCP, on the same address.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).unwrap();
        let long = vec![b'x'; 200];
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = udp.recv_from(&mut buf).unwrap();
            udp.send_to(&answer(&buf[..n], &[], true), peer).unwrap();
            let (mut stream, _) = tcp.accept().unwrap();
            let mut prefix = [0u8; 2];
            stream.read_exact(&mut prefix).unwrap();
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
            stream.read_exact(&mut query).unwrap();
            let full = answer(&query, &[b"did=did:plc:ewvi7nxzyoun6zhxrhs64oiz", &long], false);
            stream.write_all(&(full.len() as u16).to_be_bytes()).unwrap();
            stream.write_all(&full).unwrap();
        });
        let records = lookup_txt_at(&[addr], "_atproto.bob.test", Duration::from_secs(2)).unwrap();
        assert!(records[0].starts_with("did=did:plc:ewvi7nxzyoun6zhxrhs64oiz") && records[0].ends_with("xxx"), "{records:?}");
        handle.join().unwrap();

        // A server that never answers: bounded by the timeout, reported as an error.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = std::time::Instant::now();
        assert!(lookup_txt_at(&[silent.local_addr().unwrap()], "_atproto.x.test", Duration::from_millis(200)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
