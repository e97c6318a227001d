//! Identifier syntax of the AT Protocol: DID, handle, NSID, record key, TID, AT-URI, datetime,
//! and the loose Lexicon string formats (cid, uri, language). Validators are hand-written
//! character scans (no regex engine in the pull path); each mirrors the spec's regular
//! expression, cited in its doc comment, and is driven by the interop syntax fixtures.

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// `^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$`, at most 2048 characters.
pub fn is_valid_did(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("did:") else { return false };
    let Some((method, id)) = rest.split_once(':') else { return false };
    s.len() <= 2048
        && !method.is_empty()
        && method.bytes().all(|c| c.is_ascii_lowercase())
        && id.bytes().all(|c| is_alnum(c) || b"._:%-".contains(&c))
        && id.bytes().last().is_some_and(|c| is_alnum(c) || b"._-".contains(&c))
}

/// `did:plc:` followed by exactly 24 characters of `[a-z2-7]`.
pub fn is_valid_did_plc(s: &str) -> bool {
    s.strip_prefix("did:plc:").is_some_and(|id| id.len() == 24 && id.bytes().all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c)))
}

/// A DNS label of 1–63 characters: alphanumeric, inner hyphens allowed.
fn is_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    matches!((bytes.first(), bytes.last()), (Some(&a), Some(&z)) if is_alnum(a) && is_alnum(z))
        && bytes.len() <= 63
        && bytes.iter().all(|&c| is_alnum(c) || c == b'-')
}

/// Handle: at least two DNS labels, at most 253 characters, TLD not starting with a digit.
pub fn is_valid_handle(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| is_label(l))
        && labels.last().and_then(|tld| tld.bytes().next()).is_some_and(|c| c.is_ascii_alphabetic())
}

/// TLDs that must never resolve as handles (atproto handle spec).
pub fn is_disallowed_handle_tld(handle: &str) -> bool {
    let lower = handle.to_ascii_lowercase();
    [".alt", ".arpa", ".example", ".internal", ".invalid", ".local", ".localhost", ".onion"].iter().any(|tld| lower.ends_with(tld))
}

/// NSID: domain authority segments, then a name segment of letters and digits;
/// at least three segments, at most 317 characters.
pub fn is_valid_nsid(s: &str) -> bool {
    let segments: Vec<&str> = s.split('.').collect();
    let Some((name, authority)) = segments.split_last() else { return false };
    s.len() <= 317
        && segments.len() >= 3
        && authority.iter().all(|l| is_label(l))
        && authority.first().and_then(|l| l.bytes().next()).is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 63
        && name.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.bytes().all(is_alnum)
}

/// Record key: `^[a-zA-Z0-9_~.:-]{1,512}$`, not `.` or `..`.
pub fn is_valid_record_key(s: &str) -> bool {
    (1..=512).contains(&s.len()) && s != "." && s != ".." && s.bytes().all(|c| is_alnum(c) || b"_~.:-".contains(&c))
}

const TID_ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// TID: 13 characters of the base32-sortable alphabet, first one `[234567abcdefghij]`.
pub fn is_valid_tid(s: &str) -> bool {
    tid_value(s).is_some()
}

/// The value of a character of the base32-sortable alphabet (`2`–`7` are 0–5, `a`–`z` 6–31).
fn tid_digit(c: u8) -> Option<u64> {
    match c {
        b'2'..=b'7' => Some(u64::from(c - b'2')),
        b'a'..=b'z' => Some(u64::from(c - b'a') + 6),
        _ => None,
    }
}

/// The 65 bits a valid TID spells, as a `u64` (its first character is at most `j`, so the top
/// bit is 0 and nothing is lost); `None` for anything that is not a TID. One pass, no search:
/// every commit rev of every proof goes through it.
fn tid_value(s: &str) -> Option<u64> {
    let bytes = s.as_bytes();
    if bytes.len() != 13 || !(b'2'..=b'j').contains(bytes.first()?) {
        return None;
    }
    bytes.iter().try_fold(0u64, |value, &c| Some((value << 5) | tid_digit(c)?))
}

/// Microseconds since the Unix epoch encoded in a valid TID (top 53 bits after the sign bit).
pub fn tid_timestamp_micros(s: &str) -> Option<u64> {
    tid_value(s).map(|value| value >> 10)
}

/// Encodes a TID from a timestamp and clock id (for building test repositories).
pub fn tid_from_parts(micros: u64, clock_id: u16) -> String {
    let value = ((micros & ((1 << 53) - 1)) << 10) | u64::from(clock_id & 0x3ff);
    (0..13).rev().map(|i| TID_ALPHABET.get(((value >> (i * 5)) & 31) as usize).map_or('2', |&c| char::from(c))).collect()
}

/// AT identifier: a handle or a DID.
pub fn is_valid_at_identifier(s: &str) -> bool {
    is_valid_handle(s) || is_valid_did(s)
}

/// A parsed `at://authority[/collection[/rkey]]` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtUri {
    /// Handle or DID.
    pub authority: String,
    /// Collection NSID.
    pub collection: Option<String>,
    /// Record key.
    pub rkey: Option<String>,
}

impl AtUri {
    /// Parses the restricted (Lexicon) AT-URI form: no query, fragment or trailing slash,
    /// at most 8 KiB.
    pub fn parse(s: &str) -> Option<AtUri> {
        if s.len() > 8192 {
            return None;
        }
        let rest = s.strip_prefix("at://")?;
        let mut parts = rest.split('/');
        let authority = parts.next()?;
        let collection = parts.next();
        let rkey = parts.next();
        if parts.next().is_some() || !is_valid_at_identifier(authority) {
            return None;
        }
        if collection.is_some_and(|c| !is_valid_nsid(c)) || rkey.is_some_and(|r| !is_valid_record_key(r)) {
            return None;
        }
        Some(AtUri { authority: authority.to_owned(), collection: collection.map(str::to_owned), rkey: rkey.map(str::to_owned) })
    }
}

impl std::fmt::Display for AtUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at://{}", self.authority)?;
        if let Some(c) = &self.collection {
            write!(f, "/{c}")?;
        }
        if let Some(r) = &self.rkey {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

/// Parses an atproto datetime (RFC 3339 subset: `T`, seconds required, `Z` or `±hh:mm`,
/// not `-00:00`) to microseconds since the Unix epoch. `None` if the syntax or the calendar
/// is invalid, or if it falls before year 0.
pub fn parse_datetime_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut pos = 19;
    let mut micros = 0i64;
    if sep(pos, b'.') {
        let start = pos + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start || end - start > 20 {
            return None;
        }
        // Keep microsecond precision; extra digits are truncated.
        for i in 0..6 {
            let d = b.get(start + i).filter(|_| start + i < end).map_or(0, |c| i64::from(c - b'0'));
            micros = micros * 10 + d;
        }
        pos = end;
    }
    let offset_minutes = match b.get(pos..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let value = |x: &u8, y: &u8| -> Option<i64> { (x.is_ascii_digit() && y.is_ascii_digit()).then(|| i64::from(x - b'0') * 10 + i64::from(y - b'0')) };
            let (h, m) = (value(h1, h2)?, value(m1, m2)?);
            if h > 23 || m > 59 || (*sign == b'-' && h == 0 && m == 0) {
                return None;
            }
            if *sign == b'-' { -(h * 60 + m) } else { h * 60 + m }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    // Year 0000 with a positive offset would fall before year 0.
    if seconds < days_from_civil(0, 1, 1) * 86_400 {
        return None;
    }
    Some(seconds * 1_000_000 + micros)
}

/// True when `s` is a valid atproto datetime.
pub fn is_valid_datetime(s: &str) -> bool {
    parse_datetime_micros(s).is_some()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`, with `.ffffff` only when
/// the time has a fractional second.
pub fn format_datetime_micros(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = if fraction == 0 { String::new() } else { format!(".{fraction:06}") };
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z", secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60)
}

/// Loose Lexicon `cid` string: `^[a-zA-Z0-9+=]{8,256}$`, not a CIDv0 (`Qmb…`).
pub fn is_valid_cid_string(s: &str) -> bool {
    (8..=256).contains(&s.len()) && s.bytes().all(|c| is_alnum(c) || c == b'+' || c == b'=') && !s.starts_with("Qmb")
}

/// Lexicon `uri`: `^[a-z][a-z.-]{0,80}:[[:graph:]]+$`, at most 8 KiB.
pub fn is_valid_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else { return false };
    s.len() <= 8192
        && scheme.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
        && scheme.len() <= 81
        && scheme.bytes().all(|c| c.is_ascii_lowercase() || c == b'.' || c == b'-')
        && !rest.is_empty()
        && rest.bytes().all(|c| c.is_ascii_graphic())
}

/// Lexicon `language` (BCP-47 syntax): `^(i|x|X|[a-z]{2,3})(-[a-zA-Z0-9]+)*$`, plus the parse
/// rules that reject repeated variants and repeated extension singletons.
pub fn is_valid_language(s: &str) -> bool {
    let mut subtags = s.split('-');
    let primary = subtags.next().unwrap_or_default();
    let primary_ok = matches!(primary, "i" | "x" | "X") || ((2..=3).contains(&primary.len()) && primary.bytes().all(|c| c.is_ascii_lowercase()));
    let rest: Vec<String> = subtags.map(str::to_ascii_lowercase).collect();
    if !primary_ok || rest.iter().any(|t| t.is_empty() || !t.bytes().all(is_alnum)) {
        return false;
    }
    let mut seen_singletons = Vec::new();
    let mut seen_variants = Vec::new();
    let mut in_extension = false;
    for tag in &rest {
        if tag == "x" {
            break; // private use: anything goes after it
        }
        if tag.len() == 1 {
            if seen_singletons.contains(tag) {
                return false;
            }
            seen_singletons.push(tag.clone());
            in_extension = true;
        } else if !in_extension && (tag.len() >= 5 || (tag.len() == 4 && tag.as_bytes().first().is_some_and(u8::is_ascii_digit))) {
            if seen_variants.contains(tag) {
                return false;
            }
            seen_variants.push(tag.clone());
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_decodes_known_timestamp() {
        // 3k67up3j7hf2x = 2023-08-31T02:18:48.943019Z (reference/atproto.md §9)
        let micros = tid_timestamp_micros("3k67up3j7hf2x").unwrap();
        assert_eq!(format_datetime_micros(micros as i64), "2023-08-31T02:18:48.943019Z");
        let tid = tid_from_parts(micros, 5);
        assert_eq!(tid_timestamp_micros(&tid), Some(micros));
    }

    /// The one-pass reader equals the definition (13 characters of the alphabet, the first in
    /// `2`–`7`/`a`–`j`) on every string that varies one position over every byte.
    #[test]
    fn tid_validity_equals_the_definition() {
        let definition = |s: &[u8]| s.len() == 13 && b"234567abcdefghij".contains(&s[0]) && s.iter().all(|c| TID_ALPHABET.contains(c));
        for base in [&b"3k67up3j7hf2x"[..], b"2222222222222", b"jzzzzzzzzzzzz"] {
            for at in 0..13 {
                for byte in 0..=255u8 {
                    let mut candidate = base.to_vec();
                    candidate[at] = byte;
                    let Ok(text) = std::str::from_utf8(&candidate) else { continue };
                    assert_eq!(is_valid_tid(text), definition(&candidate), "{text:?}");
                }
            }
        }
        for short in ["", "3k67up3j7hf2", "3k67up3j7hf2xx"] {
            assert!(!is_valid_tid(short));
        }
        assert_eq!(tid_timestamp_micros("jzzzzzzzzzzzz"), Some(u64::MAX >> 10), "the largest TID keeps every bit");
    }

    #[test]
    fn datetime_round_trip() {
        let t = parse_datetime_micros("2024-02-29T12:00:00.5+01:00").unwrap();
        assert_eq!(format_datetime_micros(t), "2024-02-29T11:00:00.500000Z");
        assert_eq!(parse_datetime_micros("1970-01-01T00:00:00Z"), Some(0));
        assert!(parse_datetime_micros("2023-02-29T00:00:00Z").is_none());
    }
}
