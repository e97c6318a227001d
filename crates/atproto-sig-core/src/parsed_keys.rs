//! A bounded memo of parsed public keys by their text, so the proofs of one signer parse its
//! key once: decoding a compressed point takes a square root (about 6 µs on K-256, the largest
//! part of a DID-document parse). Processes that check many proofs from few signers (`serve`,
//! `watch`, a node's pull path) keep one and pass it in; nothing here reads a clock or does
//! I/O.
//!
//! Only successful parses are kept, keyed by the verification method's form and text, so a
//! lookup gives exactly what parsing that text gives. A full memo forgets its oldest key first:
//! whoever fills it (with many signers' documents) costs only the parse they would have paid.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::crypto::{KeyError, PublicKey};

/// The forms a key text can be parsed in (they read the same text differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Form {
    /// `Multikey` (multicodec + compressed point).
    Multikey,
    /// A legacy verification-method type (bare SEC1 point on the named curve).
    LegacyK256,
    /// A legacy verification-method type (bare SEC1 point on the named curve).
    LegacyP256,
}

impl Form {
    fn of(method_type: &str) -> Option<Form> {
        match method_type {
            "Multikey" => Some(Form::Multikey),
            "EcdsaSecp256k1VerificationKey2019" => Some(Form::LegacyK256),
            "EcdsaSecp256r1VerificationKey2019" => Some(Form::LegacyP256),
            _ => None,
        }
    }
}

/// Keys by text, each with the form it was parsed in (no text is a valid key in two forms:
/// a Multikey's bytes carry a multicodec prefix no SEC1 point starts with).
#[derive(Default)]
struct Memo {
    keys: HashMap<Box<str>, (Form, PublicKey)>,
    oldest_first: VecDeque<Box<str>>,
}

/// Parsed keys by (form, text), at most `capacity` of them.
pub struct ParsedKeys {
    capacity: usize,
    memo: Mutex<Memo>,
}

impl Default for ParsedKeys {
    fn default() -> ParsedKeys {
        ParsedKeys::new(ParsedKeys::DEFAULT_CAPACITY)
    }
}

impl std::fmt::Debug for ParsedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedKeys({} of {})", self.len(), self.capacity)
    }
}

impl ParsedKeys {
    /// Room for this many signers' keys (a key and its text take about 200 bytes).
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// An empty memo holding at most `capacity` keys (0 keeps none).
    pub fn new(capacity: usize) -> ParsedKeys {
        ParsedKeys { capacity, memo: Mutex::new(Memo::default()) }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.memo.lock().unwrap_or_else(PoisonError::into_inner).keys.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`PublicKey::from_verification_method`], answered from the memo when this text was
    /// parsed before in this form.
    pub fn from_verification_method(&self, method_type: &str, multibase: &str) -> Result<PublicKey, KeyError> {
        let Some(form) = Form::of(method_type) else {
            return PublicKey::from_verification_method(method_type, multibase);
        };
        if let Some((held_form, key)) = self.memo.lock().unwrap_or_else(PoisonError::into_inner).keys.get(multibase)
            && *held_form == form
        {
            return Ok(key.clone());
        }
        let key = PublicKey::from_verification_method(method_type, multibase)?;
        self.remember(form, multibase, &key);
        Ok(key)
    }

    /// [`PublicKey::from_did_key`], answered from the memo when this key was parsed before.
    pub fn from_did_key(&self, did_key: &str) -> Result<PublicKey, KeyError> {
        match did_key.strip_prefix("did:key:") {
            Some(multibase) => self.from_verification_method("Multikey", multibase),
            None => PublicKey::from_did_key(did_key),
        }
    }

    fn remember(&self, form: Form, text: &str, key: &PublicKey) {
        if self.capacity == 0 {
            return;
        }
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.keys.contains_key(text) {
            return;
        }
        while memo.keys.len() >= self.capacity {
            let Some(oldest) = memo.oldest_first.pop_front() else { break };
            memo.keys.remove(&oldest);
        }
        memo.keys.insert(Box::from(text), (form, key.clone()));
        memo.oldest_first.push_back(Box::from(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Curve, PrivateKey};

    #[test]
    fn a_remembered_key_is_the_parsed_key_and_the_memo_stays_within_its_capacity() {
        let keys = ParsedKeys::new(2);
        let texts: Vec<String> = ["a", "b", "c"].iter().map(|seed| PrivateKey::from_seed(Curve::K256, seed).public_key().to_multikey()).collect();
        for text in &texts {
            let parsed = PublicKey::from_multikey(text).unwrap();
            assert_eq!(keys.from_verification_method("Multikey", text).unwrap(), parsed);
            assert_eq!(keys.from_verification_method("Multikey", text).unwrap(), parsed, "from the memo");
            assert_eq!(keys.from_did_key(&format!("did:key:{text}")).unwrap(), parsed);
            assert!(keys.len() <= 2);
        }
        // The oldest was forgotten first.
        let memo = keys.memo.lock().unwrap();
        assert!(!memo.keys.contains_key(texts[0].as_str()));
        assert!(memo.keys.contains_key(texts[2].as_str()));
        drop(memo);
        // The same text read in another form is parsed in that form, and failures are never
        // remembered: they stay the parser's own errors.
        assert_eq!(keys.from_verification_method("EcdsaSecp256k1VerificationKey2019", &texts[2]).err(), Some(KeyError::InvalidPoint(Curve::K256)));
        assert_eq!(
            keys.from_verification_method("Ed25519VerificationKey2020", "z1").err(),
            Some(KeyError::UnsupportedType("Ed25519VerificationKey2020".into()))
        );
        assert_eq!(keys.from_did_key("zQ3sh").err(), Some(KeyError::DidKeyPrefix));
        assert_eq!(keys.len(), 2);
        assert!(ParsedKeys::new(0).from_verification_method("Multikey", &texts[0]).is_ok());
    }
}
