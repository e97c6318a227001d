//! `attach IMAGE_REF`: stores the image's proof in its registry as an OCI artifact, so that a
//! registry mirror carries what an offline node needs except the DID document. The artifact:
//! `artifactType application/vnd.atproto.signature.v1+json`, `subject` = the image, config =
//! ATCR-style signature JSON, one layer `application/vnd.ipld.car` = the proof. Found through
//! the referrers API, or the `sha256-<hex>` tag index this command maintains where there is none.

use std::path::PathBuf;

use atproto_sig_core::Limits;
use atproto_sig_core::car::Car;
use atproto_sig_core::policy::Outcome;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::reference::ImageRef;
use clap::Args;
use serde_json::{Value as Json, json};

use crate::cli::output::{Format, print_undecided};
use crate::config::Config;
use crate::exit;
use crate::lookup::registry::{CAR_MEDIA_TYPE, Files, SIGNATURE_ARTIFACT_TYPE, Session, sha256_digest};
use crate::material::knowledge;
use crate::material::store::{Cache, DidEntry, Kind, LocatorEntry, ProofEntry};
use crate::remote::{Deadline, Http, InFlight, Remote};

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The image (tag or digest) whose proof to attach.
    image: String,
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: AttachArgs) -> u8 {
    let attached = Config::load(args.config.as_deref()).map_err(|e| fail(e.to_string())).and_then(|config| {
        let remote = crate::remote::system::system(&config);
        attach(&args, &config, &remote)
    });
    match attached {
        Ok(line) => {
            println!("{line}");
            exit::ADMITTED
        }
        Err((code, message, hint)) => {
            print_undecided(Format::Text, &message, &hint);
            code
        }
    }
}

/// (exit code, message, hint) of an attach that did not happen.
pub(crate) type Refused = (u8, String, String);

fn fail(message: impl std::fmt::Display) -> Refused {
    (exit::UNDECIDED, message.to_string(), String::new())
}

/// Verifies the image over `remote`, then pushes its proof next to it in its registry.
fn attach(args: &AttachArgs, config: &Config, remote: &Remote) -> Result<String, Refused> {
    attach_image(&args.image, config, remote)
}

/// [`attach`] for `reference` (also the publisher's, for each newly created record): what it
/// did, or (exit code, message, hint).
pub(crate) fn attach_image(reference: &str, config: &Config, remote: &Remote) -> Result<String, Refused> {
    if config.offline {
        return Err(fail("attach needs the network: run it on a connected machine"));
    }
    let image = ImageRef::parse(reference).map_err(|e| fail(e.to_string()))?;
    let deadline = Deadline::after(std::time::Duration::from_secs(120));
    let http = Http::new(std::sync::Arc::clone(&remote.fetch), config.request_timeout.0, deadline, InFlight::default());
    let files = Files::new(config, deadline, crate::log::Notes::stderr());
    let session = Session::new(&files, &http, &image);
    let digest = match &image.digest {
        Some(d) => d.clone(),
        None => session.resolve(image.tag.as_deref().unwrap_or("latest")).map_err(fail)?,
    };
    let signer = verified_signer(reference, config, remote, &digest)?;
    let proof = VerifiedProof::from_cache(config, &signer, &digest)?;
    let subject = session.manifest(&digest).map_err(fail)?.ok_or_else(|| fail(format!("{digest} is not in the registry")))?;
    let subject_type = serde_json::from_slice::<Json>(&subject)
        .ok()
        .and_then(|m| m.get("mediaType").and_then(Json::as_str).map(str::to_owned))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let meta = serde_json::to_vec(&proof.signature_metadata(&digest, &subject_type)).map_err(|e| fail(e.to_string()))?;
    let meta_digest = session.push_blob(&meta).map_err(fail)?;
    let car_digest = session.push_blob(&proof.car).map_err(fail)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "config": {"mediaType": SIGNATURE_ARTIFACT_TYPE, "digest": meta_digest, "size": meta.len()},
        "layers": [{"mediaType": CAR_MEDIA_TYPE, "digest": car_digest, "size": proof.car.len()}],
        "subject": {"mediaType": subject_type, "digest": digest, "size": subject.len()},
        "annotations": {"io.atcr.atproto.did": proof.signer, "org.opencontainers.image.created": proof.signed_at.clone().unwrap_or_default()},
    }))
    .map_err(|e| fail(e.to_string()))?;
    let artifact_digest = sha256_digest(&manifest);
    let artifact = session.push_manifest(&artifact_digest, "application/vnd.oci.image.manifest.v1+json", &manifest).map_err(fail)?;
    let discovery = make_discoverable(&session, &digest, &artifact, manifest.len())?;
    Ok(format!(
        "attached {artifact} to {}@{digest}: proof of at://{}/{MANIFEST_COLLECTION}/{} (commit {}), {discovery}",
        image.scope_name(),
        proof.signer,
        proof.rkey,
        proof.commit
    ))
}

/// Verifies `digest` exactly as a pull would (only a verified proof is attached); returns the
/// signer whose proof admitted it.
fn verified_signer(reference: &str, config: &Config, remote: &Remote, digest: &str) -> Result<String, Refused> {
    let policy = crate::engine::request::load_policy(&config.policy)
        .map_err(|_| fail("attach verifies before it attaches and needs the trust policy: run `atproto-verifier policy check`"))?;
    let request = crate::engine::Request {
        reference,
        digest: Some(digest),
        descriptor: None,
        policy: Ok(&policy),
        config,
        now_micros: crate::clock::now_micros(None).unwrap_or(0),
        deadline: Deadline::after(config.budget.0),
        in_flight: &InFlight::default(),
    };
    let answer = crate::engine::decide(&request, remote);
    let decision = answer.decision;
    match (decision.outcome, decision.signers.first()) {
        (Outcome::Admit, Some(did)) => Ok(did.clone()),
        _ => Err((exit::REJECTED, format!("{reference} is not verified ({}): {}", decision.reason.code(), decision.message), answer.notes.join("; "))),
    }
}

/// The proof the verification just stored, and what the signature metadata says about it.
struct VerifiedProof {
    signer: String,
    rkey: String,
    car: Vec<u8>,
    commit: atproto_sig_core::cid::Cid,
    signed_at: Option<String>,
    document: Option<atproto_sig_core::did::DidDocument>,
}

impl VerifiedProof {
    fn from_cache(config: &Config, signer: &str, digest: &str) -> Result<VerifiedProof, Refused> {
        let cache = Cache::new(&config.cache_dir);
        let locator: LocatorEntry =
            cache.read(Kind::Locator, &[signer, digest]).ok_or_else(|| fail("the verified record's location is missing from the cache"))?;
        let proof: ProofEntry =
            cache.read(Kind::Proof, &[signer, MANIFEST_COLLECTION, &locator.rkey]).ok_or_else(|| fail("the verified proof is missing from the cache"))?;
        let car = knowledge::decode_car(&proof).ok_or_else(|| fail("the verified proof in the cache is not base64"))?;
        let limits = Limits::default();
        let document: Option<DidEntry> = cache.read(Kind::Did, &[signer]);
        let document = document.and_then(|d| atproto_sig_core::did::DidDocument::parse(d.document.as_bytes(), signer, &limits).ok());
        let parsed = Car::parse(&car, &limits).map_err(|e| fail(e.to_string()))?;
        let signed_at = knowledge::commit_rev(&car).map(|(_, micros)| atproto_sig_core::syntax::format_datetime_micros(micros));
        Ok(VerifiedProof { signer: signer.to_owned(), rkey: locator.rkey, commit: parsed.root, car, signed_at, document })
    }

    /// The ATCR-style signature JSON (the artifact's config blob).
    fn signature_metadata(&self, digest: &str, subject_type: &str) -> Json {
        let key = self.document.as_ref().and_then(|d| d.signing_key.clone().ok());
        json!({
            "$type": "io.atcr.atproto.signature",
            "version": "1.0",
            "subject": {"digest": digest, "mediaType": subject_type},
            "atproto": {
                "did": self.signer,
                "handle": self.document.as_ref().and_then(|d| d.handle.clone()),
                "pdsEndpoint": self.document.as_ref().and_then(|d| d.pds.clone()),
                "recordUri": format!("at://{}/{MANIFEST_COLLECTION}/{}", self.signer, self.rkey),
                "commitCid": self.commit.to_string(),
                "signedAt": self.signed_at,
            },
            "signature": {
                "algorithm": key.as_ref().map(|k| k.curve().jwt_alg()),
                "keyId": format!("{}#atproto", self.signer),
                "publicKeyMultibase": key.as_ref().map(|k| k.to_multikey()),
            },
        })
    }
}

/// Makes the artifact findable from the image: the registry's referrers API indexes it itself;
/// without one, the index under the `sha256-<hex>` tag is kept (other referrers preserved).
fn make_discoverable(session: &Session<'_>, digest: &str, artifact: &str, manifest_len: usize) -> Result<String, Refused> {
    if session.has_referrers_api(digest) {
        return Ok("indexed by the registry's referrers API".to_owned());
    }
    let mut index = session
        .fallback_index(digest)
        .map_err(fail)?
        .unwrap_or_else(|| json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}));
    let descriptor =
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": artifact, "size": manifest_len, "artifactType": SIGNATURE_ARTIFACT_TYPE});
    if let Some(list) = index.get_mut("manifests").and_then(Json::as_array_mut) {
        list.retain(|d| d.get("digest") != descriptor.get("digest"));
        list.push(descriptor);
    }
    let bytes = serde_json::to_vec(&index).map_err(|e| fail(e.to_string()))?;
    let tag = digest.replace(':', "-");
    session.push_manifest(&tag, "application/vnd.oci.image.index.v1+json", &bytes).map_err(fail)?;
    Ok(format!("listed under the tag {tag}"))
}
