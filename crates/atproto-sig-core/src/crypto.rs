//! ECDSA over K-256 and P-256 as atproto uses it: SHA-256 of the message, 64-byte r‖s
//! signatures (DER rejected), low-S required on both curves, keys as Multikey / did:key
//! (compressed point with a multicodec prefix) or the legacy DID-document forms (bare
//! compressed or uncompressed SEC1 point, curve named by the verification method type).

use k256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256};
use std::fmt;

/// The two curves atproto allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// secp256k1, JWT `ES256K`.
    K256,
    /// secp256r1 / NIST P-256, JWT `ES256`.
    P256,
}

impl Curve {
    /// The JWT algorithm name.
    pub fn jwt_alg(self) -> &'static str {
        match self {
            Curve::K256 => "ES256K",
            Curve::P256 => "ES256",
        }
    }

    /// floor(n/2) as big-endian bytes: an `s` above it is "high".
    fn half_order(self) -> [u8; 32] {
        match self {
            Curve::K256 => [
                0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d,
                0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
            ],
            Curve::P256 => [
                0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42,
                0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
            ],
        }
    }

    /// The multicodec prefix of this curve's public keys.
    fn multicodec(self) -> [u8; 2] {
        match self {
            Curve::K256 => [0xe7, 0x01],
            Curve::P256 => [0x80, 0x24],
        }
    }
}

/// A public key on one of the two curves.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// secp256k1.
    K256(k256::ecdsa::VerifyingKey),
    /// P-256.
    P256(p256::ecdsa::VerifyingKey),
}

/// Why a key string cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Not `z` + base58btc.
    Multibase,
    /// did:key without the `did:key:` prefix, or the wrong one.
    DidKeyPrefix,
    /// A multicodec other than secp256k1-pub or p256-pub.
    UnsupportedCodec,
    /// A verification-method type we do not know.
    UnsupportedType(String),
    /// Bytes that are not a point on the curve (or the wrong length).
    InvalidPoint(Curve),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Multibase => write!(f, "key is not 'z' + base58btc"),
            KeyError::DidKeyPrefix => write!(f, "not a did:key"),
            KeyError::UnsupportedCodec => write!(f, "key type is neither secp256k1 nor P-256"),
            KeyError::UnsupportedType(t) => write!(f, "verification method type {t:?} is not supported"),
            KeyError::InvalidPoint(c) => write!(f, "not a valid {c:?} public key"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Why a signature does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// Not exactly 64 bytes (DER signatures end up here).
    Length(usize),
    /// r or s is zero or not below the group order.
    OutOfRange,
    /// s > n/2: the malleable twin of a valid signature; atproto requires low-S.
    HighS,
    /// The equation does not hold for this key and message.
    Mismatch,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Length(n) => write!(f, "signature has {n} bytes, expected 64 (r||s)"),
            SignatureError::OutOfRange => write!(f, "signature scalar out of range"),
            SignatureError::HighS => write!(f, "signature is high-S (atproto requires low-S)"),
            SignatureError::Mismatch => write!(f, "signature does not match the key and message"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Bound on multibase key text, far above any valid key (base58 of 65 bytes is ~90 chars).
const MAX_KEY_TEXT: usize = 256;

/// `z` + base58btc only: other multibases are refused (atproto keys are always base58btc).
fn decode_base58btc(text: &str) -> Result<Vec<u8>, KeyError> {
    if !text.starts_with('z') || text.len() > MAX_KEY_TEXT {
        return Err(KeyError::Multibase);
    }
    match multibase::decode(text) {
        Ok((multibase::Base::Base58Btc, bytes)) => Ok(bytes),
        _ => Err(KeyError::Multibase),
    }
}

impl PublicKey {
    /// Parses SEC1 bytes (33-byte compressed or 65-byte uncompressed) on `curve`.
    pub fn from_sec1(curve: Curve, bytes: &[u8]) -> Result<PublicKey, KeyError> {
        if !matches!((bytes.len(), bytes.first()), (33, Some(2 | 3)) | (65, Some(4))) {
            return Err(KeyError::InvalidPoint(curve));
        }
        match curve {
            Curve::K256 => k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map(PublicKey::K256),
            Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map(PublicKey::P256),
        }
        .map_err(|_| KeyError::InvalidPoint(curve))
    }

    /// Parses a Multikey `publicKeyMultibase` (`z` + base58btc of multicodec + compressed point).
    pub fn from_multikey(multibase: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode_base58btc(multibase)?;
        let (curve, point) = match bytes.as_slice() {
            [0xe7, 0x01, point @ ..] => (Curve::K256, point),
            [0x80, 0x24, point @ ..] => (Curve::P256, point),
            _ => return Err(KeyError::UnsupportedCodec),
        };
        // The Multikey form is compressed-only (atproto cryptography spec).
        if point.len() != 33 {
            return Err(KeyError::InvalidPoint(curve));
        }
        PublicKey::from_sec1(curve, point)
    }

    /// Parses `did:key:z…`.
    pub fn from_did_key(did_key: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_multikey(did_key.strip_prefix("did:key:").ok_or(KeyError::DidKeyPrefix)?)
    }

    /// Parses a legacy verification method: the curve comes from `method_type`, and
    /// `publicKeyMultibase` is a bare SEC1 point (uncompressed per the spec, compressed in the
    /// interop fixtures: both accepted).
    pub fn from_legacy(method_type: &str, multibase: &str) -> Result<PublicKey, KeyError> {
        let curve = match method_type {
            "EcdsaSecp256k1VerificationKey2019" => Curve::K256,
            "EcdsaSecp256r1VerificationKey2019" => Curve::P256,
            other => return Err(KeyError::UnsupportedType(other.chars().take(64).collect())),
        };
        PublicKey::from_sec1(curve, &decode_base58btc(multibase)?)
    }

    /// Parses a DID-document verification method of type `Multikey` or a legacy type.
    pub fn from_verification_method(method_type: &str, multibase: &str) -> Result<PublicKey, KeyError> {
        match method_type {
            "Multikey" => PublicKey::from_multikey(multibase),
            _ => PublicKey::from_legacy(method_type, multibase),
        }
    }

    /// The curve of this key.
    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::K256(_) => Curve::K256,
            PublicKey::P256(_) => Curve::P256,
        }
    }

    /// The 33-byte compressed SEC1 point.
    pub fn to_compressed(&self) -> Vec<u8> {
        match self {
            PublicKey::K256(k) => k.to_sec1_point(true).as_bytes().to_vec(),
            PublicKey::P256(k) => k.to_sec1_point(true).as_bytes().to_vec(),
        }
    }

    /// Multikey form (`z…`).
    pub fn to_multikey(&self) -> String {
        let mut bytes = self.curve().multicodec().to_vec();
        bytes.extend_from_slice(&self.to_compressed());
        multibase::encode(multibase::Base::Base58Btc, bytes)
    }

    /// `did:key:z…`.
    pub fn to_did_key(&self) -> String {
        format!("did:key:{}", self.to_multikey())
    }

    /// Verifies `signature` over SHA-256(`message`).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let digest = Sha256::digest(message);
        self.verify_prehash(&digest, signature)
    }

    /// Verifies `signature` over an already computed SHA-256 digest.
    pub fn verify_prehash(&self, digest: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        if signature.len() != 64 {
            return Err(SignatureError::Length(signature.len()));
        }
        // Explicit on both curves: p256 accepts high-S on its own (reference/peers.md §2.2).
        let s = signature.get(32..64).ok_or(SignatureError::Length(signature.len()))?;
        if s > self.curve().half_order().as_slice() {
            return Err(SignatureError::HighS);
        }
        match self {
            PublicKey::K256(key) => {
                let sig = k256::ecdsa::Signature::from_slice(signature).map_err(|_| SignatureError::OutOfRange)?;
                key.verify_prehash(digest, &sig).map_err(|_| SignatureError::Mismatch)
            }
            PublicKey::P256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|_| SignatureError::OutOfRange)?;
                key.verify_prehash(digest, &sig).map_err(|_| SignatureError::Mismatch)
            }
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_did_key())
    }
}

/// A signing key: a bundle publisher's (the binary signs its publications with it; this crate
/// never reads or makes one), and the test repositories' and fixtures'.
#[derive(Clone)]
pub enum PrivateKey {
    /// secp256k1.
    K256(k256::ecdsa::SigningKey),
    /// P-256.
    P256(p256::ecdsa::SigningKey),
}

/// Bound on a private Multikey's text (base58 of 2 + 32 bytes is under 50 characters).
const MAX_PRIVATE_KEY_TEXT: usize = 128;

impl PrivateKey {
    /// Parses a private Multikey (`z` + base58btc of the `secp256k1-priv` 0x1301 or `p256-priv`
    /// 0x1306 multicodec and the 32-byte scalar): the form `goat key generate` prints.
    pub fn from_multikey(multibase: &str) -> Result<PrivateKey, KeyError> {
        let text = multibase.trim();
        if text.len() > MAX_PRIVATE_KEY_TEXT {
            return Err(KeyError::Multibase);
        }
        let bytes = decode_base58btc(text)?;
        let (curve, scalar) = match bytes.as_slice() {
            [0x81, 0x26, scalar @ ..] => (Curve::K256, scalar),
            [0x86, 0x26, scalar @ ..] => (Curve::P256, scalar),
            _ => return Err(KeyError::UnsupportedCodec),
        };
        if scalar.len() != 32 {
            return Err(KeyError::InvalidPoint(curve));
        }
        PrivateKey::from_bytes(curve, scalar).ok_or(KeyError::InvalidPoint(curve))
    }

    /// Parses a raw 32-byte scalar.
    pub fn from_bytes(curve: Curve, bytes: &[u8]) -> Option<PrivateKey> {
        match curve {
            Curve::K256 => k256::ecdsa::SigningKey::from_slice(bytes).ok().map(PrivateKey::K256),
            Curve::P256 => p256::ecdsa::SigningKey::from_slice(bytes).ok().map(PrivateKey::P256),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::K256(k) => PublicKey::K256(*k.verifying_key()),
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
        }
    }

    /// A deterministic (RFC 6979), low-S, 64-byte signature over SHA-256(`message`).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use k256::ecdsa::signature::hazmat::PrehashSigner;
        let digest = Sha256::digest(message);
        let signed = match self {
            PrivateKey::K256(k) => PrehashSigner::<k256::ecdsa::Signature>::sign_prehash(k, &digest).map(|s| s.normalize_s().to_bytes().to_vec()),
            PrivateKey::P256(k) => PrehashSigner::<p256::ecdsa::Signature>::sign_prehash(k, &digest).map(|s| s.normalize_s().to_bytes().to_vec()),
        };
        // Signing a 32-byte prehash with a valid key cannot fail; keep the API infallible.
        signed.unwrap_or_default()
    }

    /// The private Multikey form (`z…`) that [`PrivateKey::from_multikey`] reads.
    pub fn to_multikey(&self) -> String {
        let (codec, scalar): ([u8; 2], Vec<u8>) = match self {
            PrivateKey::K256(k) => ([0x81, 0x26], k.to_bytes().to_vec()),
            PrivateKey::P256(k) => ([0x86, 0x26], k.to_bytes().to_vec()),
        };
        let mut bytes = codec.to_vec();
        bytes.extend_from_slice(&scalar);
        multibase::encode(multibase::Base::Base58Btc, bytes)
    }
}

#[cfg(any(test, feature = "testkit"))]
impl PrivateKey {
    /// A deterministic key derived from `seed` (SHA-256 of it, as a scalar).
    pub fn from_seed(curve: Curve, seed: &str) -> PrivateKey {
        let mut scalar: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        loop {
            let key = match curve {
                Curve::K256 => k256::ecdsa::SigningKey::from_slice(&scalar).ok().map(PrivateKey::K256),
                Curve::P256 => p256::ecdsa::SigningKey::from_slice(&scalar).ok().map(PrivateKey::P256),
            };
            if let Some(key) = key {
                return key;
            }
            scalar = Sha256::digest(scalar).into();
        }
    }

    /// The high-S twin of a low-S signature (n - s), which atproto must reject.
    pub fn to_high_s(&self, signature: &[u8]) -> Vec<u8> {
        let flipped = match self {
            PrivateKey::K256(_) => k256::ecdsa::Signature::from_slice(signature).ok().map(|s| {
                let (r, s) = s.split_scalars();
                k256::ecdsa::Signature::from_scalars(r, -s).map(|x| x.to_bytes().to_vec())
            }),
            PrivateKey::P256(_) => p256::ecdsa::Signature::from_slice(signature).ok().map(|s| {
                let (r, s) = s.split_scalars();
                p256::ecdsa::Signature::from_scalars(r, -s).map(|x| x.to_bytes().to_vec())
            }),
        };
        flipped.and_then(Result::ok).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_legacy_key_equals_multikey() {
        let multikey = PublicKey::from_multikey("zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF").unwrap();
        let legacy = PublicKey::from_legacy(
            "EcdsaSecp256k1VerificationKey2019",
            "zQYEBzXeuTM9UR3rfvNag6L3RNAs5pQZyYPsomTsgQhsxLdEgCrPTLgFna8yqCnxPpNT7DBk6Ym3dgPKNu86vt9GR",
        )
        .unwrap();
        assert_eq!(multikey, legacy);
    }

    #[test]
    fn sign_verify_and_reject_high_s_on_both_curves() {
        for curve in [Curve::K256, Curve::P256] {
            let key = PrivateKey::from_seed(curve, "t");
            let public = key.public_key();
            let sig = key.sign(b"hello");
            assert_eq!(public.verify(b"hello", &sig), Ok(()));
            assert_eq!(public.verify(b"hellp", &sig), Err(SignatureError::Mismatch));
            let high = key.to_high_s(&sig);
            assert_eq!(high.len(), 64);
            assert_eq!(public.verify(b"hello", &high), Err(SignatureError::HighS));
            assert_eq!(public.verify(b"hello", &sig[..63]), Err(SignatureError::Length(63)));
            assert_eq!(PublicKey::from_did_key(&public.to_did_key()).unwrap(), public);
        }
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!(PublicKey::from_multikey("Q3sh"), Err(KeyError::Multibase));
        assert_eq!(PublicKey::from_multikey("z"), Err(KeyError::UnsupportedCodec));
        assert_eq!(PublicKey::from_multikey("z1"), Err(KeyError::UnsupportedCodec));
        assert_eq!(PublicKey::from_did_key("zQ3sh"), Err(KeyError::DidKeyPrefix));
        let long = format!("z{}", "1".repeat(1000));
        assert_eq!(PublicKey::from_multikey(&long), Err(KeyError::Multibase));
        assert!(matches!(PublicKey::from_legacy("Ed25519VerificationKey2020", "z1"), Err(KeyError::UnsupportedType(_))));
    }

    #[test]
    fn private_multikeys_round_trip_on_both_curves_and_bad_ones_are_refused() {
        for curve in [Curve::K256, Curve::P256] {
            let key = PrivateKey::from_seed(curve, "publisher");
            let text = key.to_multikey();
            let parsed = PrivateKey::from_multikey(&format!("{text}\n")).unwrap();
            assert_eq!(parsed.public_key(), key.public_key());
            let signature = parsed.sign(b"message");
            assert_eq!(key.public_key().verify(b"message", &signature), Ok(()));
        }
        // A public Multikey is not a private one; nor is garbage or an over-long text.
        let public = PrivateKey::from_seed(Curve::P256, "publisher").public_key().to_multikey();
        assert_eq!(PrivateKey::from_multikey(&public).err(), Some(KeyError::UnsupportedCodec));
        assert_eq!(PrivateKey::from_multikey("not a key").err(), Some(KeyError::Multibase));
        assert_eq!(PrivateKey::from_multikey(&"z".repeat(500)).err(), Some(KeyError::Multibase));
        // The zero scalar is no key.
        let mut zero = vec![0x86, 0x26];
        zero.extend([0u8; 32]);
        assert!(PrivateKey::from_multikey(&multibase::encode(multibase::Base::Base58Btc, zero)).is_err());
    }
}
