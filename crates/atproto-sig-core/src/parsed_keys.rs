//! A bounded memo of parsed public keys by their text, so the proofs of one signer parse its
//! key once: decoding a compressed point takes a square root (about 6 µs on K-256, the largest
//! part of a DID-document parse). Processes that check many proofs from few signers (`serve`,
//! `watch`, a node's pull path) keep one and pass it in; nothing here reads a clock or does
//! I/O.
//!
//! Only successful parses are kept, keyed by the verification method's form and text, so a
//! lookup gives exactly what parsing that text gives. A full memo forgets its oldest key first:
//! whoever fills it (with many signers' documents) costs only the parse they would have paid.
//!
//! The same memo keeps, for each DID asked for, the document text last parsed for it and the
//! document it gave, so a signer's unchanged document is not parsed again at every proof
//! either: a lookup answers only for exactly the same text under the same DID (anything else is
//! parsed, and replaces it). Documents over [`ParsedKeys::MAX_DOCUMENT_BYTES`] are not kept.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::crypto::{KeyError, PublicKey};
use crate::did::DidDocument;

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

/// Documents by the DID they were parsed for: the exact text and what it gave.
#[derive(Default)]
struct Documents {
    by_did: HashMap<Box<str>, (Box<[u8]>, DidDocument)>,
    oldest_first: VecDeque<Box<str>>,
}

/// Parsed keys by (form, text), at most `capacity` of them, and parsed documents by DID, at most
/// a quarter as many.
pub struct ParsedKeys {
    capacity: usize,
    memo: Mutex<Memo>,
    documents: Mutex<Documents>,
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

    /// Documents longer than this are parsed every time (real ones take about 1 KB; with the
    /// default capacity, remembered documents take at most 8 MiB).
    pub const MAX_DOCUMENT_BYTES: usize = 8 << 10;

    /// An empty memo holding at most `capacity` keys (0 keeps none).
    pub fn new(capacity: usize) -> ParsedKeys {
        ParsedKeys { capacity, memo: Mutex::new(Memo::default()), documents: Mutex::new(Documents::default()) }
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

    /// The document `text` gave when it was last parsed for `did`, if it is exactly that text.
    pub(crate) fn document(&self, did: &str, text: &[u8]) -> Option<DidDocument> {
        let documents = self.documents.lock().unwrap_or_else(PoisonError::into_inner);
        let (held, document) = documents.by_did.get(did)?;
        (**held == *text).then(|| document.clone())
    }

    /// Remembers what `text` gave, parsed for `did` (replacing what was held for that DID).
    pub(crate) fn remember_document(&self, did: &str, text: &[u8], document: &DidDocument) {
        let capacity = self.capacity / 4;
        if capacity == 0 || text.len() > ParsedKeys::MAX_DOCUMENT_BYTES {
            return;
        }
        let mut documents = self.documents.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = documents.by_did.get_mut(did) {
            *held = (Box::from(text), document.clone());
            return;
        }
        while documents.by_did.len() >= capacity {
            let Some(oldest) = documents.oldest_first.pop_front() else { break };
            documents.by_did.remove(&oldest);
        }
        documents.by_did.insert(Box::from(did), (Box::from(text), document.clone()));
        documents.oldest_first.push_back(Box::from(did));
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

    /// A document is answered from the memo only for exactly the text it was parsed from, under
    /// the DID it was parsed for; another text for that DID is parsed and replaces it; documents
    /// are bounded by a quarter of the capacity, and oversized ones are not kept.
    #[test]
    fn a_remembered_document_is_the_parsed_document_of_exactly_that_text_and_did() {
        use crate::Limits;
        let limits = Limits::default();
        let keys = ParsedKeys::new(8);
        let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
        let key = PrivateKey::from_seed(Curve::K256, "doc").public_key();
        let text = |handle: &str| crate::did::render_multikey_document(did, &key, Some(handle), Some("https://pds.example")).to_string();
        let (first, second) = (text("alice.test"), text("bob.test"));
        for document in [&first, &second, &first] {
            let parsed = DidDocument::parse(document.as_bytes(), did, &limits);
            assert_eq!(DidDocument::parse_with_keys(document.as_bytes(), did, &limits, &keys), parsed);
            assert_eq!(keys.document(did, document.as_bytes()), Some(parsed.clone().unwrap()), "remembered");
            assert_eq!(DidDocument::parse_with_keys(document.as_bytes(), did, &limits, &keys), parsed, "from the memo");
        }
        assert_eq!(keys.document(did, second.as_bytes()), None, "replaced by the newer text");
        // The same text asked for under another DID is that DID's parse (an id mismatch).
        let other = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
        assert!(DidDocument::parse_with_keys(first.as_bytes(), other, &limits, &keys).is_err());
        assert_eq!(keys.document(other, first.as_bytes()), None);
        // Bounded: 8 / 4 = 2 documents.
        for i in 0..5 {
            let did = format!("did:web:host{i}.example");
            let document = crate::did::render_multikey_document(&did, &key, None, None).to_string();
            DidDocument::parse_with_keys(document.as_bytes(), &did, &limits, &keys).unwrap();
        }
        assert!(keys.documents.lock().unwrap().by_did.len() <= 2);
        let padded = format!("{}{}", " ".repeat(ParsedKeys::MAX_DOCUMENT_BYTES), first);
        assert!(DidDocument::parse_with_keys(padded.as_bytes(), did, &limits, &keys).is_ok());
        assert_eq!(keys.document(did, padded.as_bytes()), None, "an oversized document is kept");
    }
}
