//! The Ratify v1 external verifier plugin entry: the same binary, installed in Ratify's
//! plugin directory under the verifier's name, executed with no arguments and
//! `RATIFY_VERIFIER_COMMAND=VERIFY`, `RATIFY_VERIFIER_SUBJECT` (the image, by digest) and
//! `RATIFY_VERIFIER_VERSION`; stdin is `{config, storeConfig, referenceDesc}` (Ratify's
//! `PluginInputConfig`), for each referrer of `application/vnd.atproto.signature.v1+json` that
//! `attach` pushed. The referrer is only the trigger: the subject is decided by the engine,
//! exactly as the node decides it (the attached proof is one of the inputs it reads).
//!
//! Output: one line of JSON on stdout, a `VerifierResult` (`isSuccess`, `message`, `name`,
//! `type`, `extensions`), exit 0, for every decision; Ratify keeps only lines holding `{`, so
//! nothing else with a brace is written to stdout or stderr. A plugin failure (unknown command,
//! missing variables, unreadable stdin) is Ratify's `{code, msg}` error form, exit 1.

use std::io::Read;

use serde_json::{Value as Json, json};

use crate::engine::{self, Class, Request};
use crate::remote::{Deadline, InFlight};

/// Environment variables Ratify sets (pkg/verifier/plugin/const.go).
pub const COMMAND_ENV: &str = "RATIFY_VERIFIER_COMMAND";
pub const SUBJECT_ENV: &str = "RATIFY_VERIFIER_SUBJECT";
pub const VERSION_ENV: &str = "RATIFY_VERIFIER_VERSION";

/// Largest stdin read (the verifier's config, the store's, one descriptor).
const MAX_STDIN: u64 = 1 << 20;

/// Ratify's plugin error codes (pkg/verifier/types).
const ERR_CONFIG_PARSING: u32 = 1;
const ERR_UNKNOWN_COMMAND: u32 = 3;
const ERR_MISSING_ENV: u32 = 4;
const ERR_IO: u32 = 5;

/// True when Ratify runs this binary as a plugin: no arguments, and its command variable set.
pub fn is_ratify_invocation(args: &[std::ffi::OsString]) -> bool {
    args.len() == 1 && std::env::var_os(COMMAND_ENV).is_some()
}

fn error(code: u32, msg: &str) -> u8 {
    // Ratify reads the error from stdout on a non-zero exit.
    println!("{}", json!({"code": code, "msg": crate::limits::printable(msg)}));
    1
}

/// What the plugin reads from stdin.
struct Input {
    name: String,
    config_path: Option<std::path::PathBuf>,
    policy_path: Option<std::path::PathBuf>,
    referrer: Option<String>,
}

/// The keys of the plugin's `config`: Ratify's own for every verifier, then this plugin's.
const RATIFY_KEYS: [&str; 7] = ["name", "type", "artifactTypes", "nestedReferences", "source", "address", "version"];
const OUR_KEYS: [&str; 2] = ["configPath", "policyPath"];

fn parse_input(bytes: &[u8]) -> Result<Input, String> {
    let json: Json = serde_json::from_slice(bytes).map_err(|e| format!("stdin is not Ratify's plugin input: {e}"))?;
    let config = json.get("config").cloned().unwrap_or(Json::Null);
    if let Some(map) = config.as_object() {
        // A misspelt key (`configpath`) would otherwise silently fall back to the default config.
        if let Some(unknown) = map.keys().find(|k| !RATIFY_KEYS.contains(&k.as_str()) && !OUR_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "unknown key {:?} in the verifier's config: this plugin reads {} (and Ratify's own {})",
                crate::limits::short(unknown, 64),
                OUR_KEYS.join(", "),
                RATIFY_KEYS.join(", ")
            ));
        }
    }
    for key in OUR_KEYS {
        if config.get(key).is_some_and(|v| !v.is_string()) {
            return Err(format!("{key} in the verifier's config is not a string"));
        }
    }
    let text = |k: &str| config.get(k).and_then(Json::as_str).map(str::to_owned);
    Ok(Input {
        name: text("name").unwrap_or_else(|| "atproto".into()),
        config_path: text("configPath").map(Into::into),
        policy_path: text("policyPath").map(Into::into),
        referrer: json.pointer("/referenceDesc/digest").and_then(Json::as_str).map(str::to_owned),
    })
}

/// Runs the plugin; returns the exit code.
pub fn run() -> u8 {
    let command = std::env::var(COMMAND_ENV).unwrap_or_default();
    if command != "VERIFY" {
        return error(ERR_UNKNOWN_COMMAND, &format!("unknown command {command:?}: this plugin supports VERIFY"));
    }
    let Ok(subject) = std::env::var(SUBJECT_ENV) else {
        return error(ERR_MISSING_ENV, &format!("{SUBJECT_ENV} is not set"));
    };
    let _version = std::env::var(VERSION_ENV).unwrap_or_default();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin) {
        return error(ERR_IO, &format!("cannot read stdin: {e}"));
    }
    if stdin.len() as u64 > MAX_STDIN {
        return error(ERR_IO, &format!("stdin is over {MAX_STDIN} bytes"));
    }
    let input = match parse_input(&stdin) {
        Ok(input) => input,
        Err(e) => return error(ERR_CONFIG_PARSING, &e),
    };
    let mut config = match crate::config::Config::load(input.config_path.as_deref()) {
        Ok(config) => config,
        Err(e) => return error(ERR_CONFIG_PARSING, &e.to_string()),
    };
    if let Some(policy) = &input.policy_path {
        config.policy.clone_from(policy);
    }
    let policy = engine::request::load_policy(&config.policy);
    let request = Request {
        reference: &subject,
        digest: None,
        descriptor: None,
        policy: policy.as_ref(),
        config: &config,
        now_micros: crate::clock::now_micros(None).unwrap_or(0),
        deadline: Deadline::after(config.budget.0),
        in_flight: &InFlight::default(),
    };
    let answer = engine::decide(&request, &crate::remote::system::system(&config));
    println!("{}", result(&input, &answer));
    0
}

/// The `VerifierResult` line for `answer`.
fn result(input: &Input, answer: &engine::Answer) -> Json {
    let decision = &answer.decision;
    let admitted = answer.class() == Class::Admitted;
    let what = match answer.class() {
        Class::Admitted => "admitted",
        Class::Rejected => "rejected",
        Class::Undecided => "not decided",
    };
    let mut message = format!("atproto-verifier: {what} ({}): {}", decision.reason.code(), crate::limits::printable(&decision.message));
    if !answer.hint().is_empty() {
        message.push_str(&format!(" — {}", answer.hint()));
    }
    json!({
        "isSuccess": admitted,
        "message": message,
        "name": input.name,
        "type": "atproto",
        "extensions": {
            // Undecided is not a rejection: Ratify's report says which it was.
            "outcome": if answer.class() == Class::Undecided { "undecided" } else { engine::outcome_label(decision.outcome) },
            "reason": decision.reason.code(),
            "image": answer.image.as_ref().map(ToString::to_string),
            "signers": decision.signers,
            "rule": decision.rule,
            "referrer": input.referrer,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_input_as_ratify_writes_it() {
        let stdin = br#"{"config":{"artifactTypes":"application/vnd.atproto.signature.v1+json","name":"atproto","configPath":"/etc/a.toml"},
            "storeConfig":{"version":"1.0.0","pluginBinDirs":null,"store":{"name":"oras","useHttp":true}},
            "referenceDesc":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:57","size":741,"artifactType":"application/vnd.atproto.signature.v1+json"}}"#;
        let input = parse_input(stdin).unwrap();
        assert_eq!((input.name.as_str(), input.referrer.as_deref()), ("atproto", Some("sha256:57")));
        assert_eq!(input.config_path.as_deref(), Some(std::path::Path::new("/etc/a.toml")));
        assert!(parse_input(b"{").is_err());
    }

    #[test]
    fn unknown_config_keys_are_refused_by_name() {
        let error = parse_input(br#"{"config":{"name":"atproto","configpath":"/etc/a.toml"}}"#).err().unwrap();
        assert!(error.contains("unknown key \"configpath\"") && error.contains("configPath, policyPath"), "{error}");
        assert!(parse_input(br#"{"config":{"name":"atproto","configPath":7}}"#).err().unwrap().contains("not a string"));
        assert!(parse_input(br#"{"config":{"name":"a","type":"atproto","artifactTypes":"x","policyPath":"/p"}}"#).is_ok());
    }
}
