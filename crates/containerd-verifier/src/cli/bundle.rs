//! `bundle create | inspect | import`: carrying verification material to air-gapped nodes.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::bundle;
use crate::cli::output::{Format, load_config, print_json, print_undecided};
use crate::exit;
use crate::material::store::Cache;

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// On a connected machine: DID documents, did:plc audit logs and current proofs in one file.
    Create(CreateArgs),
    /// List what a bundle holds.
    Inspect(InspectArgs),
    /// Verify every entry of a bundle and load the valid ones into the cache.
    Import(ImportArgs),
    /// Publish each DID's bundle to an OCI repository that a fleet's nodes read
    /// (`bundle_source`), signed with the publisher key when given.
    Push(PushArgs),
    /// Make a publisher key: the private key to a new file, its did:key (for the nodes'
    /// `bundle_signers`) to stdout.
    Keygen(KeygenArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Where: oci://REGISTRY/REPOSITORY.
    target: String,
    /// DIDs whose bundles to publish (each gets a tag of its own and an entry in the index).
    #[arg(long = "did", required = true)]
    dids: Vec<String>,
    /// The publisher key (from `bundle keygen`): signs each publication, so nodes that list its
    /// did:key in `bundle_signers` count the bundle's fetch times as their own.
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The new key's file (created, readable by this user only; never overwritten).
    #[arg(short = 'o', long)]
    output: PathBuf,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Output file.
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Images whose proofs to include (signers come from the trust policy).
    #[arg(long = "image")]
    images: Vec<String>,
    /// DIDs whose io.atcr.manifest records to include, all of them.
    #[arg(long = "did")]
    dids: Vec<String>,
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    file: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    file: PathBuf,
    /// Let a did:web document in the bundle replace the key of the one this node holds
    /// (did:web has no signed history: a key change cannot be checked, only allowed).
    #[arg(long)]
    allow_did_web_key_change: bool,
    /// Let a did:plc audit log in the bundle nullify operations this node holds (a recovery).
    /// Its 72-hour window rests on unsigned `createdAt` dates: take it only from a bundle you
    /// know was made from the PLC directory.
    #[arg(long)]
    accept_plc_recovery: bool,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(command: BundleCommand) -> u8 {
    match command {
        BundleCommand::Create(args) => create(&args),
        BundleCommand::Inspect(args) => inspect(&args),
        BundleCommand::Import(args) => import(&args),
        BundleCommand::Push(args) => push(&args),
        BundleCommand::Keygen(args) => keygen(&args),
    }
}

fn push(args: &PushArgs) -> u8 {
    let location = match crate::fleet::Location::parse(&args.target) {
        Ok(l) => l,
        Err(e) => {
            print_undecided(Format::Text, &e, "name the repository as oci://REGISTRY/REPOSITORY");
            return exit::UNDECIDED;
        }
    };
    let config = match load_config(args.config.as_deref(), Format::Text) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = match args.key.as_deref().map(crate::fleet::read_key).transpose() {
        Ok(key) => key,
        Err(e) => {
            print_undecided(Format::Text, &e, "make one with `atproto-verifier bundle keygen -o FILE`");
            return exit::UNDECIDED;
        }
    };
    match crate::fleet::publish::publish(&config, &crate::remote::system::system(&config), &location, &args.dids, key.as_ref()) {
        Ok(published) => {
            for p in &published {
                println!(
                    "published {} to {}:{} ({}, {} bytes, {}; {} identity requests)",
                    p.did,
                    location.canonical().trim_start_matches("oci://"),
                    p.tag,
                    p.digest,
                    p.bundle_bytes,
                    if p.signed { "signed" } else { "unsigned: nodes count its fetch times as claims" },
                    p.identity_requests
                );
            }
            println!("index: {}:{}", location.canonical().trim_start_matches("oci://"), crate::fleet::INDEX_TAG);
            exit::ADMITTED
        }
        Err(e) => {
            print_undecided(Format::Text, &e.to_string(), "check the network, the DIDs, and push access to the repository (docker_config)");
            exit::UNDECIDED
        }
    }
}

fn keygen(args: &KeygenArgs) -> u8 {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let made = (|| -> Result<String, String> {
        let mut scalar = [0u8; 32];
        // The kernel's CSPRNG; a scalar out of range (about 2^-128) is drawn again.
        let key = loop {
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut scalar)).map_err(|e| format!("/dev/urandom: {e}"))?;
            if let Some(key) = atproto_sig_core::crypto::PrivateKey::from_bytes(atproto_sig_core::crypto::Curve::P256, &scalar) {
                break key;
            }
        };
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&args.output).map_err(|e| format!("{}: {e}", args.output.display()))?;
        file.write_all(format!("{}\n", key.to_multikey()).as_bytes()).map_err(|e| format!("{}: {e}", args.output.display()))?;
        Ok(key.public_key().to_did_key())
    })();
    match made {
        Ok(did_key) => {
            println!("{did_key}");
            eprintln!("wrote the private key to {}; list the did:key above in the nodes' bundle_signers", args.output.display());
            exit::ADMITTED
        }
        Err(e) => {
            print_undecided(Format::Text, &e, "name a new file");
            exit::UNDECIDED
        }
    }
}

fn create(args: &CreateArgs) -> u8 {
    if args.images.is_empty() && args.dids.is_empty() {
        print_undecided(Format::Text, "nothing to bundle", "name images (--image REF) and/or DIDs (--did DID)");
        return exit::UNDECIDED;
    }
    let config = match load_config(args.config.as_deref(), Format::Text) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = crate::engine::request::load_policy(&config.policy).ok();
    match bundle::create(&config, &crate::remote::system::system(&config), policy.as_ref(), &args.images, &args.dids, &args.output) {
        Ok(b) => {
            println!(
                "{}: {} DID documents ({} with audit logs), {} proofs, {} locators",
                args.output.display(),
                b.dids.len(),
                b.dids.iter().filter(|d| d.audit_log.is_some()).count(),
                b.proofs.len(),
                b.locators.len()
            );
            // How large each signed collection state is: what importing it costs a node.
            for c in &b.collections {
                let bytes = c.car.len() / 4 * 3;
                let car = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &c.car).unwrap_or_default();
                let records = atproto_sig_core::collection::record_count(&car, &c.collection, &atproto_sig_core::Limits::collection())
                    .map_or_else(|e| format!("records not counted ({e})"), |n| format!("{n} record{}", if n == 1 { "" } else { "s" }));
                println!("  collection state of {}: {records}, {:.1} MiB", c.did, bytes as f64 / f64::from(1u32 << 20));
            }
            exit::ADMITTED
        }
        Err(e) => {
            print_undecided(Format::Text, &e.to_string(), "check the network, the DIDs and the image references");
            exit::UNDECIDED
        }
    }
}

fn load(path: &std::path::Path, format: Format) -> Option<bundle::Bundle> {
    match bundle::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            print_undecided(format, &format!("{}: {e}", path.display()), "");
            None
        }
    }
}

fn inspect(args: &InspectArgs) -> u8 {
    let Some(b) = load(&args.file, args.format) else { return exit::UNDECIDED };
    let time = atproto_sig_core::syntax::format_datetime_micros;
    match args.format {
        Format::Json => print_json(&serde_json::json!({
            "createdAt": b.created_at,
            "dids": b.dids.iter().map(|d| serde_json::json!({"did": d.did, "fetchedAt": time(d.fetched_at), "source": d.source, "auditLog": d.audit_log.is_some()})).collect::<Vec<_>>(),
            "proofs": b.proofs.iter().map(|p| serde_json::json!({"did": p.did, "collection": p.collection, "rkey": p.rkey, "fetchedAt": time(p.fetched_at), "bytes": p.car.len() * 3 / 4})).collect::<Vec<_>>(),
            "locators": b.locators.iter().map(|l| serde_json::json!({"did": l.did, "digest": l.digest, "rkey": l.rkey})).collect::<Vec<_>>(),
        })),
        Format::Text => {
            println!("bundle created {}", b.created_at);
            for d in &b.dids {
                println!(
                    "  DID      {} fetched {} from {}{}",
                    d.did,
                    time(d.fetched_at),
                    d.source,
                    if d.audit_log.is_some() { ", with audit log" } else { "" }
                );
            }
            for p in &b.proofs {
                println!("  proof    at://{}/{}/{} fetched {}", p.did, p.collection, p.rkey, time(p.fetched_at));
            }
            for l in &b.locators {
                println!("  locator  {} -> {} in {}", l.digest, l.rkey, l.did);
            }
        }
    }
    exit::ADMITTED
}

fn import(args: &ImportArgs) -> u8 {
    let config = match load_config(args.config.as_deref(), args.format) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(b) = load(&args.file, args.format) else { return exit::UNDECIDED };
    let cache = Cache::new(&config.cache_dir);
    let now = match crate::clock::now_micros(None) {
        Ok(now) => now,
        Err(e) => {
            eprintln!("{e}");
            return exit::UNDECIDED;
        }
    };
    let rules = crate::material::knowledge::DocumentRules { did_web_key_change: args.allow_did_web_key_change, plc_recovery: args.accept_plc_recovery };
    let report = bundle::import_with(&b, &cache, &args.file.display().to_string(), &config, now, rules);
    match args.format {
        Format::Json => {
            print_json(&serde_json::json!({"stored": report.stored, "unchanged": report.unchanged, "refused": report.refused, "notes": report.notes}))
        }
        Format::Text => {
            // Per entry, so an operator sees exactly what changed the cache and what did not.
            println!(
                "{}: imported {} entries, {} unchanged, refused {}",
                args.file.display(),
                report.stored.len(),
                report.unchanged.len(),
                report.refused.len()
            );
            for s in &report.stored {
                println!("  stored: {s}");
            }
            for u in &report.unchanged {
                println!("  unchanged: {u}");
            }
            for r in &report.refused {
                println!("  refused: {r}");
            }
            for n in &report.notes {
                println!("  note: {n}");
            }
        }
    }
    // What the bundle revoked reaches the images already in containerd's store.
    if report.notes.iter().any(|n| n.starts_with("revoked ")) {
        crate::node::after_learning(&config, now);
    }
    if report.refused.is_empty() { exit::ADMITTED } else { exit::REJECTED }
}
