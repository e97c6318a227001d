//! A minimal DNS client for one question: the TXT records of a name (`_atproto.<handle>`).
//! Hand-written because the maintained Rust resolvers run on an async runtime. UDP to the
//! nameservers of /etc/resolv.conf (or $ATPROTO_VERIFIER_DNS, `ip:port`, for tests), with a
//! timeout, a random query id checked on the answer, and bounds checks on every byte read.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;

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

/// Encodes a query for `name` TXT with id `id`.
pub fn encode_query(name: &str, id: u16) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&TYPE_TXT.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(out)
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// Skips a (possibly compressed) name, returning the offset after it.
fn skip_name(buf: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *buf.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
    None
}

/// Parses the TXT answers of a response to query `id` (each record's strings joined).
pub fn parse_response(buf: &[u8], id: u16) -> Result<Vec<String>, String> {
    if u16_at(buf, 0) != Some(id) {
        return Err("DNS answer for another query".into());
    }
    let flags = u16_at(buf, 2).ok_or("short DNS answer")?;
    if flags & 0x8000 == 0 {
        return Err("not a DNS response".into());
    }
    if flags & 0x0200 != 0 {
        return Err("DNS answer truncated".into());
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Vec::new()), // NXDOMAIN: no records
        rcode => return Err(format!("DNS error code {rcode}")),
    }
    let questions = u16_at(buf, 4).ok_or("short DNS answer")?;
    let answers = u16_at(buf, 6).ok_or("short DNS answer")?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(buf, at).ok_or("malformed DNS question")? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers.min(64) {
        at = skip_name(buf, at).ok_or("malformed DNS answer")?;
        let kind = u16_at(buf, at).ok_or("short DNS record")?;
        let rdlen = usize::from(u16_at(buf, at + 8).ok_or("short DNS record")?);
        let rdata = buf.get(at + 10..at + 10 + rdlen).ok_or("short DNS record")?;
        at += 10 + rdlen;
        if kind != TYPE_TXT {
            continue;
        }
        let mut text = Vec::new();
        let mut i = 0;
        while let Some(&n) = rdata.get(i) {
            text.extend_from_slice(rdata.get(i + 1..i + 1 + usize::from(n)).ok_or("malformed TXT record")?);
            i += 1 + usize::from(n);
        }
        out.push(String::from_utf8_lossy(&text).into_owned());
    }
    Ok(out)
}

/// The TXT records of `name`, or why there are none to be had.
pub fn lookup_txt(name: &str, timeout: Duration) -> Result<Vec<String>, String> {
    lookup_txt_at(&nameservers(), name, timeout)
}

/// Same, asking the given nameservers in order.
pub fn lookup_txt_at(servers: &[SocketAddr], name: &str, timeout: Duration) -> Result<Vec<String>, String> {
    if timeout.is_zero() {
        return Err("no time left for DNS".into());
    }
    let id = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) ^ std::process::id()) as u16;
    let query = encode_query(name, id).ok_or_else(|| format!("{name:?} is not a DNS name"))?;
    let mut last = "no nameserver configured".to_owned();
    for &server in servers {
        let bind = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let result = (|| -> Result<Vec<String>, String> {
            let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
            socket.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
            socket.connect(server).map_err(|e| e.to_string())?;
            socket.send(&query).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4096];
            let n = socket.recv(&mut buf).map_err(|e| format!("{server}: {e}"))?;
            parse_response(buf.get(..n).unwrap_or_default(), id)
        })();
        match result {
            Ok(records) => return Ok(records),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u16, txt: &[&[u8]]) -> Vec<u8> {
        let mut out = encode_query("_atproto.alice.test", id).unwrap();
        out[2] = 0x81;
        out[3] = 0x80;
        out[7] = 1;
        out.extend_from_slice(&[0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 0, 60]);
        let rdata: Vec<u8> = txt.iter().flat_map(|s| std::iter::once(s.len() as u8).chain(s.iter().copied())).collect();
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
        out
    }

    #[test]
    fn parses_txt_answers_and_rejects_garbage() {
        let buf = answer(7, &[b"did=did:plc:", b"abc"]);
        assert_eq!(parse_response(&buf, 7), Ok(vec!["did=did:plc:abc".to_owned()]));
        assert!(parse_response(&buf, 8).is_err());
        for cut in 0..buf.len() {
            let _ = parse_response(&buf[..cut], 7); // never panics
        }
        assert!(encode_query("a..b", 1).is_none());
    }

    #[test]
    fn queries_a_loopback_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            assert!(n > 12);
            server.send_to(&answer(id, &[b"did=did:plc:ewvi7nxzyoun6zhxrhs64oiz"]), peer).unwrap();
        });
        let records = lookup_txt_at(&[addr], "_atproto.alice.test", Duration::from_secs(2)).unwrap();
        assert_eq!(records, vec!["did=did:plc:ewvi7nxzyoun6zhxrhs64oiz".to_owned()]);
        // A server that never answers: bounded by the timeout, reported as an error.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = std::time::Instant::now();
        assert!(lookup_txt_at(&[silent.local_addr().unwrap()], "_atproto.x.test", Duration::from_millis(200)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        handle.join().unwrap();
    }
}
