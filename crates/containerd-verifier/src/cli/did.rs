//! `did verify-log`: verifies a did:plc audit log offline and prints the state it ends in.

use std::path::PathBuf;

use atproto_sig_core::Limits;
use atproto_sig_core::plc::verify_audit_log;
use clap::{Args, Subcommand};

use crate::cli::output::{Format, print_json, print_undecided};
use crate::exit;
use crate::fsio::read_capped;

#[derive(Subcommand, Debug)]
pub enum DidCommand {
    /// Verify a did:plc audit log (GET <plc>/<did>/log/audit) and print the current key, PDS and handle.
    VerifyLog(VerifyLog),
}

#[derive(Args, Debug)]
pub struct VerifyLog {
    /// The did:plc the log belongs to.
    #[arg(long)]
    did: String,
    /// The audit log JSON file.
    #[arg(long)]
    audit_log: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(command: DidCommand) -> u8 {
    match command {
        DidCommand::VerifyLog(args) => verify_log(&args),
    }
}

fn verify_log(args: &VerifyLog) -> u8 {
    let limits = Limits::default();
    let bytes = match read_capped(&args.audit_log, limits.max_json_bytes * 16) {
        Ok(bytes) => bytes,
        Err(e) => {
            print_undecided(args.format, &e.to_string(), "fetch it with: curl https://plc.directory/<did>/log/audit");
            return exit::UNDECIDED;
        }
    };
    match verify_audit_log(&args.did, &bytes, &limits) {
        Ok(state) => {
            let key = state.signing_key();
            match args.format {
                Format::Json => print_json(&serde_json::json!({
                    "valid": true,
                    "did": state.did,
                    "deactivated": state.deactivated,
                    "signingKey": key.as_ref().ok().map(|k| k.to_did_key()),
                    "curve": key.as_ref().ok().map(|k| k.curve().jwt_alg()),
                    "pds": state.pds(),
                    "handle": state.handle(),
                    "rotationKeys": state.rotation_keys,
                })),
                Format::Text => {
                    println!("valid audit log for {}", state.did);
                    if state.deactivated {
                        println!("  status:      deactivated (tombstoned): no key, no PDS");
                    }
                    match &key {
                        Ok(k) => println!("  signing key: {} ({})", k.to_did_key(), k.curve().jwt_alg()),
                        Err(e) => println!("  signing key: none ({e})"),
                    }
                    println!("  PDS:         {}", state.pds().as_deref().unwrap_or("none"));
                    println!("  handle:      {}", state.handle().as_deref().unwrap_or("none"));
                    println!("  rotation:    {}", state.rotation_keys.join(", "));
                }
            }
            exit::ADMITTED
        }
        Err(e) => {
            match args.format {
                Format::Json => print_json(&serde_json::json!({"valid": false, "did": args.did, "reason": e.to_string()})),
                Format::Text => println!("invalid audit log for {}: {e}", args.did),
            }
            exit::REJECTED
        }
    }
}
