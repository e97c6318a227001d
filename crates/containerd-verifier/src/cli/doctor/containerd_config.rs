//! containerd's configuration as containerd itself reads it, for `doctor`: the main file and
//! every `imports` file (globs, relative to the importing file, breadth first), each migrated
//! from its own version (v1 `cri`, v2 `io.containerd.grpc.v1.cri`, v3+
//! `io.containerd.cri.v1.images`), plugin sections merged key by key (later files win, nested
//! tables merged: observed on 2.2.9 and 2.4.2, whatever the comment in their `mergeConfig`
//! says), and `disabled_plugins` appended — the rules of containerd 2.2–2.4's `LoadConfig`.
//!
//! Then what matters to image verification: whether the bindir verifier plugin runs, where its
//! `bin_dir` is, and every CRI setting that makes containerd fall back to the local pull,
//! which runs no verifier (the list of `CheckLocalImagePullConfigs`, identical in 2.2.9 and
//! 2.4.2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const BINDIR_PLUGIN: &str = "io.containerd.image-verifier.v1.bindir";
pub const CRI_IMAGES_PLUGIN: &str = "io.containerd.cri.v1.images";
const CRI_V2_PLUGIN: &str = "io.containerd.grpc.v1.cri";
/// containerd's default `bin_dir`, as `containerd config default` prints it.
pub const DEFAULT_BIN_DIR: &str = "/opt/containerd/image-verifier/bin";
/// Most files followed through `imports`.
const MAX_FILES: usize = crate::limits::NodeLimits::DEFAULT.containerd_imports;

/// A plugin section and the file it came from.
#[derive(Clone, Debug)]
pub struct Section {
    pub table: toml::Table,
    pub file: PathBuf,
}

/// The effective configuration.
#[derive(Debug, Default)]
pub struct Effective {
    /// Files read, in load order.
    pub files: Vec<PathBuf>,
    pub disabled_plugins: Vec<(String, PathBuf)>,
    pub plugins: BTreeMap<String, Section>,
}

/// A setting that makes CRI pulls skip image verifiers.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalPullTrigger {
    /// Where: `file:line`, or the file when the line is not found.
    pub at: String,
    /// What is set, in containerd's words.
    pub setting: String,
    /// What to use instead.
    pub fix: &'static str,
}

/// Why containerd's configuration cannot be read as containerd would.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContainerdConfigError {
    #[error("{path}: {problem}")]
    Unreadable { path: String, problem: String },
    #[error("{path} does not parse: {problem}")]
    Syntax { path: String, problem: String },
    #[error("more than {MAX_FILES} files through `imports`")]
    TooManyImports,
}

fn read(path: &Path) -> Result<(String, toml::Table), ContainerdConfigError> {
    let unreadable = |problem: String| ContainerdConfigError::Unreadable { path: path.display().to_string(), problem };
    let bytes = crate::fsio::read_capped(path, crate::limits::NodeLimits::DEFAULT.config_file).map_err(|e| unreadable(e.problem))?;
    let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8".into()))?;
    let table = toml::from_str(&text).map_err(|e| ContainerdConfigError::Syntax { path: path.display().to_string(), problem: e.to_string() })?;
    Ok((text, table))
}

/// The files an `imports` list names, as containerd resolves them.
fn resolve_imports(parent: &Path, imports: &[String]) -> Vec<PathBuf> {
    let base = parent.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for import in imports {
        let path = if Path::new(import).is_absolute() { PathBuf::from(import) } else { base.join(import) };
        match path.file_name().map(|n| n.to_string_lossy().into_owned()) {
            Some(name) if name.contains('*') => {
                // Globs in the last component only (what packages use: conf.d/*.toml).
                let (prefix, suffix) = name.split_once('*').unwrap_or((&name, ""));
                let dir = path.parent().unwrap_or(Path::new("/"));
                let mut matches: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .map(|e| e.path())
                            .filter(|p| {
                                p.file_name().is_some_and(|n| {
                                    let n = n.to_string_lossy();
                                    n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len()
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                matches.sort();
                out.extend(matches);
            }
            _ => out.push(path),
        }
    }
    out
}

/// Moves a pre-v3 file's CRI settings where containerd's migration puts them.
fn migrate(version: i64, plugins: &mut toml::Table) {
    if version >= 3 {
        return;
    }
    let old = plugins.remove(CRI_V2_PLUGIN).or_else(|| plugins.remove("cri"));
    let Some(toml::Value::Table(src)) = old else { return };
    let mut dst = match plugins.remove(CRI_IMAGES_PLUGIN) {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    for key in ["registry", "image_decryption", "max_concurrent_downloads", "image_pull_progress_timeout", "image_pull_with_sync_fs", "stats_collect_period"] {
        if let Some(v) = src.get(key) {
            dst.insert(key.into(), v.clone());
        }
    }
    if let Some(toml::Value::Table(containerd)) = src.get("containerd") {
        for key in ["snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers"] {
            if let Some(v) = containerd.get(key) {
                dst.insert(key.into(), v.clone());
            }
        }
    }
    // Kept under the old name too: the v2 plugin also holds `use_local_image_pull` nowhere,
    // so nothing else is read from it.
    plugins.insert(CRI_IMAGES_PLUGIN.into(), toml::Value::Table(dst));
}

/// Merges `from` into `into` as containerd does: nested tables key by key, other values replaced.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => merge(existing, incoming),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Loads `path` and its imports.
pub fn load(path: &Path) -> Result<Effective, ContainerdConfigError> {
    let mut effective = Effective::default();
    let mut pending = vec![path.to_owned()];
    while let Some(next) = (!pending.is_empty()).then(|| pending.remove(0)) {
        if effective.files.contains(&next) {
            continue;
        }
        if effective.files.len() >= MAX_FILES {
            return Err(ContainerdConfigError::TooManyImports);
        }
        let (_, mut table) = read(&next)?;
        let version = table.get("version").and_then(toml::Value::as_integer).unwrap_or(1);
        let mut plugins = match table.remove("plugins") {
            Some(toml::Value::Table(p)) => p,
            _ => toml::Table::new(),
        };
        migrate(version, &mut plugins);
        for (name, value) in plugins {
            if let toml::Value::Table(t) = value {
                match effective.plugins.get_mut(&name) {
                    Some(section) => {
                        merge(&mut section.table, t);
                        section.file.clone_from(&next);
                    }
                    None => {
                        effective.plugins.insert(name, Section { table: t, file: next.clone() });
                    }
                }
            }
        }
        if let Some(toml::Value::Array(items)) = table.get("disabled_plugins") {
            for item in items.iter().filter_map(toml::Value::as_str) {
                effective.disabled_plugins.push((item.to_owned(), next.clone()));
            }
        }
        let imports: Vec<String> = match table.get("imports") {
            Some(toml::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        pending.extend(resolve_imports(&next, &imports));
        effective.files.push(next);
    }
    Ok(effective)
}

/// `file:line` of the first line mentioning `needle` in `file` (for messages).
pub fn locate(file: &Path, needle: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    match text.lines().position(|l| l.contains(needle)) {
        Some(i) => format!("{}:{}", file.display(), i + 1),
        None => file.display().to_string(),
    }
}

impl Effective {
    pub fn is_disabled(&self, plugin: &str) -> Option<&Path> {
        self.disabled_plugins.iter().find(|(p, _)| p == plugin).map(|(_, f)| f.as_path())
    }

    pub fn plugin(&self, name: &str) -> Option<&Section> {
        self.plugins.get(name)
    }

    /// The bindir plugin's `bin_dir` (containerd's default when unset).
    pub fn bin_dir(&self) -> PathBuf {
        PathBuf::from(self.plugin(BINDIR_PLUGIN).and_then(|s| s.table.get("bin_dir")).and_then(toml::Value::as_str).unwrap_or(DEFAULT_BIN_DIR))
    }

    /// Every CRI setting that makes containerd pull without the transfer service (and so
    /// without image verifiers), in containerd's order; defaults are what containerd assumes.
    pub fn local_pull_triggers(&self) -> Vec<LocalPullTrigger> {
        let Some(section) = self.plugin(CRI_IMAGES_PLUGIN) else { return Vec::new() };
        let t = &section.table;
        // The last file (in load order) that mentions the key is the one that set it.
        let at = |key: &str| {
            self.files
                .iter()
                .rev()
                .find(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(key)))
                .map_or_else(|| section.file.display().to_string(), |f| locate(f, key))
        };
        let mut out = Vec::new();
        let mut add = |key: &str, setting: String, fix: &'static str| out.push(LocalPullTrigger { at: at(key), setting, fix });
        let flag = |key: &str| t.get(key).and_then(toml::Value::as_bool);
        if flag("use_local_image_pull") == Some(true) {
            add(
                "use_local_image_pull",
                "use_local_image_pull = true".into(),
                "remove it: CRI pulls then go through the transfer service, which runs image verifiers",
            );
        }
        if flag("disable_snapshot_annotations") == Some(false) {
            add(
                "disable_snapshot_annotations",
                "disable_snapshot_annotations = false".into(),
                "remove it (the default is true); snapshot annotations for remote snapshotters are configured on the snapshotter plugin with the transfer service",
            );
        }
        if flag("discard_unpacked_layers") == Some(true) {
            add("discard_unpacked_layers", "discard_unpacked_layers = true".into(), "remove it: it is not supported with the transfer service");
        }
        let registry = t.get("registry").and_then(toml::Value::as_table);
        for (key, what) in [("mirrors", "registry.mirrors"), ("configs", "registry.configs"), ("auths", "registry.auths")] {
            if registry.and_then(|r| r.get(key)).and_then(toml::Value::as_table).is_some_and(|m| !m.is_empty()) {
                add(
                    key,
                    what.into(),
                    "deprecated: move it to `config_path` with one hosts.toml per registry (mirrors, TLS) and a docker/CRI credential source",
                );
            }
        }
        if let Some(n) = t.get("max_concurrent_downloads").and_then(toml::Value::as_integer).filter(|n| *n != 3) {
            add(
                "max_concurrent_downloads",
                format!("max_concurrent_downloads = {n}"),
                "remove it here and set max_concurrent_downloads on [plugins.\"io.containerd.transfer.v1.local\"] instead",
            );
        }
        if flag("image_pull_with_sync_fs") == Some(true) {
            add("image_pull_with_sync_fs", "image_pull_with_sync_fs = true".into(), "remove it: it is not supported with the transfer service");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effective(files: &[(&str, &str)]) -> (tempfile::TempDir, Effective) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let loaded = load(&dir.path().join(files[0].0)).unwrap();
        (dir, loaded)
    }

    #[test]
    fn imports_merge_sections_and_v2_files_are_migrated() {
        let (_d, e) = effective(&[
            (
                "config.toml",
                "version = 3\nimports = [\"conf.d/*.toml\"]\ndisabled_plugins = [\"a\"]\n[plugins.\"io.containerd.cri.v1.images\"]\nuse_local_image_pull = true\n",
            ),
            (
                "conf.d/10-cri.toml",
                "version = 2\ndisabled_plugins = [\"b\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = true\n",
            ),
        ]);
        assert_eq!(e.files.len(), 2);
        assert_eq!(e.disabled_plugins.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let triggers: Vec<String> = e.local_pull_triggers().into_iter().map(|t| t.setting).collect();
        // Sections merge key by key: the main file's setting stays beside the import's.
        assert_eq!(triggers, ["use_local_image_pull = true", "discard_unpacked_layers = true", "registry.mirrors"]);
        assert_eq!(e.bin_dir(), PathBuf::from(DEFAULT_BIN_DIR));
    }

    #[test]
    fn defaults_trigger_nothing() {
        let (_d, e) = effective(&[(
            "config.toml",
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\nmax_concurrent_downloads = 3\ndisable_snapshot_annotations = true\n",
        )]);
        assert!(e.local_pull_triggers().is_empty());
        let (_d, e) = effective(&[("config.toml", "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\nmax_concurrent_downloads = 5\n")]);
        assert_eq!(e.local_pull_triggers()[0].setting, "max_concurrent_downloads = 5");
        assert!(e.local_pull_triggers()[0].at.ends_with("config.toml:3"));
    }
}
