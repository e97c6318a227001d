//! The config and trust policy a server decides under, reloaded when their files change. A
//! new config or policy that does not load keeps the one in force, and says so (log and
//! `/readyz`); every successful load is a new generation, so no decision made under the old
//! one is answered from the cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use atproto_sig_core::policy::Policy;

use crate::config::Config;
use crate::engine::PolicyError;
use crate::engine::request::load_policy;

/// One generation of config and policy.
#[derive(Debug)]
pub struct Loaded {
    pub generation: u64,
    pub config: Config,
    pub policy: Result<Policy, PolicyError>,
}

impl Loaded {
    /// Why no decision can be made under this generation, if so.
    pub fn unready(&self) -> Option<String> {
        match &self.policy {
            Ok(_) => None,
            Err(PolicyError::Unreadable(e)) => Some(format!("no trust policy loaded: {e}")),
            Err(PolicyError::Invalid(errors)) => Some(format!("no trust policy loaded: {}", errors.join("; "))),
        }
    }
}

/// What identifies a file's contents cheaply: length and modification time, through links
/// (a Kubernetes ConfigMap volume swaps a symlinked directory).
type Stamp = Option<(u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Where the config and policy come from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub config: Option<PathBuf>,
    /// Overrides the config's `policy`.
    pub policy: Option<PathBuf>,
}

/// The generation in force, and the last reload's problem.
pub struct Settings {
    sources: Sources,
    current: RwLock<Arc<Loaded>>,
    problem: Mutex<Option<String>>,
    stamps: Mutex<(Stamp, Stamp)>,
}

impl Settings {
    /// Loads the first generation; a config that does not load is an error (nothing to run
    /// with), a policy that does not load is not (the server starts unready, and says why).
    pub fn load(sources: Sources) -> Result<Settings, String> {
        let (config, policy_path) = read_config(&sources)?;
        let stamps = (sources.config.as_deref().and_then(stamp), stamp(&policy_path));
        let policy = load_policy(&policy_path);
        let loaded = Loaded { generation: 1, config, policy };
        Ok(Settings { sources, current: RwLock::new(Arc::new(loaded)), problem: Mutex::new(None), stamps: Mutex::new(stamps) })
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The last reload's problem, if it failed.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reloads if either file changed; returns the new generation when one was made.
    pub fn reload_if_changed(&self) -> Option<u64> {
        let policy_now = self.policy_path();
        let now = (self.sources.config.as_deref().and_then(stamp), stamp(&policy_now));
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
            if *stamps == now {
                return None;
            }
            *stamps = now;
        }
        self.reload()
    }

    fn policy_path(&self) -> PathBuf {
        self.sources.policy.clone().unwrap_or_else(|| self.current().config.policy.clone())
    }

    /// Loads config and policy again; keeps the generation in force when either fails (unless
    /// no policy was ever loaded: then the newer failure is the one to say).
    pub fn reload(&self) -> Option<u64> {
        let old = self.current();
        let failed = |message: String| {
            crate::log::warn(&format!("{message} — still deciding under generation {} (fix the file; it is read again when it changes)", old.generation));
            *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
            None
        };
        let (config, policy_path) = match read_config(&self.sources) {
            Ok(found) => found,
            Err(e) => return failed(format!("config reload failed: {e}")),
        };
        let policy = load_policy(&policy_path);
        if let (Err(e), Ok(_)) = (&policy, &old.policy) {
            return failed(format!("policy reload failed: {}", PolicyFailure(e)));
        }
        let generation = old.generation + 1;
        let ready = policy.is_ok();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Loaded { generation, config, policy });
        *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if ready {
            crate::log::info(&format!("config and trust policy loaded (generation {generation})"));
        }
        Some(generation)
    }
}

struct PolicyFailure<'a>(&'a PolicyError);

impl std::fmt::Display for PolicyFailure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            PolicyError::Unreadable(e) => write!(f, "{e}"),
            PolicyError::Invalid(errors) => write!(f, "{}", errors.join("; ")),
        }
    }
}

fn read_config(sources: &Sources) -> Result<(Config, PathBuf), String> {
    let mut config = Config::load(sources.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(policy) = &sources.policy {
        config.policy.clone_from(policy);
    }
    let policy = config.policy.clone();
    Ok((config, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1.0\ntrustedDIDs: {}\npolicies: []\ndefault: { action: enforce, require: { signature: false } }\n";

    #[test]
    fn a_broken_policy_keeps_the_one_in_force_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("cache_dir = {:?}\n", dir.path().join("cache"))).unwrap();
        std::fs::write(&policy, "version: [").unwrap();
        let settings = Settings::load(Sources { config: Some(config), policy: Some(policy.clone()) }).unwrap();
        assert!(settings.current().unready().is_some());
        std::fs::write(&policy, GOOD).unwrap();
        assert_eq!(settings.reload(), Some(2));
        assert!(settings.current().unready().is_none());
        std::fs::write(&policy, "version: [").unwrap();
        assert_eq!(settings.reload(), None);
        assert_eq!(settings.current().generation, 2);
        assert!(settings.current().policy.is_ok());
        assert!(settings.problem().unwrap().contains("policy reload failed"));
        std::fs::write(&policy, GOOD.replace("false", "true")).unwrap();
        assert_eq!(settings.reload(), Some(3));
        assert_eq!(settings.problem(), None);
    }
}
