//! Scope globs over canonical `host/path`.

/// Glob match over `host/path`: `*` = any run of characters without `/`, `**` = any run.
/// Dynamic programming over (pattern, text): linear memory, no backtracking blow-up.
pub fn scope_matches(pattern: &str, text: &str) -> bool {
    enum Token {
        Char(u8),
        Star,
        DoubleStar,
    }
    let bytes = pattern.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c == b'*' {
            if bytes.get(i + 1) == Some(&b'*') {
                tokens.push(Token::DoubleStar);
                i += 2;
            } else {
                tokens.push(Token::Star);
                i += 1;
            }
        } else {
            tokens.push(Token::Char(c));
            i += 1;
        }
    }
    let text = text.as_bytes();
    // reachable[j]: pattern prefix matches text prefix of length j.
    let mut reachable = vec![false; text.len() + 1];
    if let Some(first) = reachable.first_mut() {
        *first = true;
    }
    for token in &tokens {
        let mut next = vec![false; text.len() + 1];
        match token {
            Token::Char(c) => {
                for j in 0..text.len() {
                    if reachable.get(j) == Some(&true)
                        && text.get(j) == Some(c)
                        && let Some(slot) = next.get_mut(j + 1)
                    {
                        *slot = true;
                    }
                }
            }
            Token::Star | Token::DoubleStar => {
                let crosses = matches!(token, Token::DoubleStar);
                let mut carrying = false;
                for j in 0..=text.len() {
                    carrying = carrying || reachable.get(j) == Some(&true);
                    if let Some(slot) = next.get_mut(j) {
                        *slot = carrying;
                    }
                    if !crosses && text.get(j) == Some(&b'/') {
                        carrying = false;
                    }
                }
            }
        }
        reachable = next;
    }
    reachable.last() == Some(&true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_semantics() {
        assert!(scope_matches("atcr.io/*/prod-*", "atcr.io/alice.test/prod-api"));
        assert!(!scope_matches("atcr.io/*/prod-*", "atcr.io/alice.test/team/prod-api"));
        assert!(scope_matches("atcr.io/**/prod-*", "atcr.io/alice.test/team/prod-api"));
        assert!(scope_matches("**", "docker.io/library/nginx"));
        assert!(!scope_matches("docker.io/*", "docker.io/library/nginx"));
        assert!(scope_matches("docker.io/**", "docker.io/library/nginx"));
        assert!(scope_matches("localhost:5000/*", "localhost:5000/app"));
        assert!(!scope_matches("localhost:5000/*", "localhost:5001/app"));
        assert!(scope_matches("*/app", "[::1]:5000/app"));
        assert!(!scope_matches("", "x"));
        assert!(scope_matches(&"*".repeat(200), "a/b")); // no blow-up
    }
}
