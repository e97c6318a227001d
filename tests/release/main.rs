//! The release artifacts `scripts/release` builds into `dist/` (scripts/test builds them
//! first): checksums, static binaries for both architectures (aarch64 run under qemu-user),
//! and the .deb installed into a scratch root with dpkg, then `doctor` against it, then purged.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn dist() -> PathBuf {
    let dist = repo_root().join("dist");
    assert!(dist.join("SHA256SUMS").is_file(), "{} has no release artifacts: run scripts/release first (scripts/test does)", dist.display());
    dist
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// (e_machine, has a PT_INTERP program header) of an ELF64 little-endian file.
fn elf_facts(bytes: &[u8]) -> (u16, bool) {
    assert_eq!(bytes.get(..4), Some(&b"\x7fELF"[..]), "not ELF");
    assert_eq!(bytes[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let machine = u16_at(0x12);
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36) as usize, u16_at(0x38) as usize);
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3);
    (machine, interp)
}

#[test]
fn checksums_and_static_binaries_for_both_architectures() {
    let dist = dist();
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    let mut files = 0;
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(dist.join(name)).unwrap();
        assert_eq!(sum, atproto_sig_core::encoding::hex_encode(&Sha256::digest(&bytes)), "{name}");
        files += 1;
    }
    assert_eq!(files, 6, "two binaries, two tarballs, one .deb, the CI script:\n{sums}");
    for (arch, machine) in [("x86_64", 0x3e), ("aarch64", 0xb7)] {
        let binary = dist.join(format!("atproto-verifier-{}-{arch}-linux-musl", version()));
        let bytes = std::fs::read(&binary).unwrap();
        let (found, interp) = elf_facts(&bytes);
        assert_eq!(found, machine, "{arch}: e_machine");
        assert!(!interp, "{arch}: statically linked (no dynamic loader)");
        assert!(bytes.len() < 20 << 20, "{arch}: stripped ({} bytes)", bytes.len());
        let out = if arch == "aarch64" {
            let qemu = ["/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-aarch64"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("qemu-user is missing: apt-get install qemu-user-static (scripts/test installs it)");
            Command::new(qemu).arg(&binary).arg("--version").output().unwrap()
        } else {
            Command::new(&binary).arg("--version").output().unwrap()
        };
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("atproto-verifier {}", version()), "{arch} runs");
    }
}

#[test]
fn the_deb_installs_into_a_scratch_root_doctor_is_green_and_purge_cleans_up() {
    let dist = dist();
    let deb = std::fs::read_dir(&dist).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "deb")).expect("a .deb in dist/");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let out = Command::new("dpkg")
            .arg(format!("--root={}", r.display()))
            .args(["--force-script-chrootless", "--force-not-root", "--log=/dev/null"])
            .args(args)
            .output()
            .expect("dpkg");
        assert!(out.status.success(), "dpkg {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    for file in [
        "usr/bin/atproto-verifier",
        "opt/containerd/image-verifier/bin/atproto-verifier",
        "etc/atproto-verifier/config.toml",
        "etc/atproto-verifier/trust-policy.yaml",
        "etc/containerd/conf.d/atproto-verifier.toml",
        "lib/systemd/system/atproto-verifier-refresh.service",
        "lib/systemd/system/atproto-verifier-refresh.timer",
        "lib/systemd/system/atproto-verifier-watch.service",
        "lib/systemd/system/atproto-verifier-publish.service",
        "usr/share/man/man1/atproto-verifier.1.gz",
        "usr/share/man/man1/atproto-verifier-doctor.1.gz",
        "usr/share/bash-completion/completions/atproto-verifier",
        "usr/share/zsh/vendor-completions/_atproto-verifier",
        "usr/share/fish/vendor_completions.d/atproto-verifier.fish",
    ] {
        assert!(r.join(file).exists(), "{file} is not installed");
    }
    assert!(r.join("var/log/atproto-verifier").is_dir() && r.join("var/lib/atproto-verifier").is_dir(), "postinst creates the audit-log and cache directories");
    let conffiles = std::fs::read_to_string(r.join("var/lib/dpkg/info/atproto-verifier.conffiles")).unwrap();
    for conffile in ["/etc/atproto-verifier/config.toml", "/etc/atproto-verifier/trust-policy.yaml", "/etc/containerd/conf.d/atproto-verifier.toml"] {
        assert!(conffiles.contains(conffile), "{conffile} is a conffile: {conffiles}");
    }
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/atproto-verifier-refresh.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/atproto-verifier cache refresh"), "the unit runs the packaged binary:\n{unit}");
    let watch = std::fs::read_to_string(r.join("lib/systemd/system/atproto-verifier-watch.service")).unwrap();
    assert!(watch.contains("ExecStart=/usr/bin/atproto-verifier watch") && watch.contains("Restart=always"), "the watch unit:\n{watch}");

    // doctor, run by the installed binary against the installed files (their absolute paths
    // mapped into the scratch root): a containerd main config that imports conf.d.
    let inside = |p: &str| r.join(p.trim_start_matches('/'));
    let fragment = std::fs::read_to_string(inside("/etc/containerd/conf.d/atproto-verifier.toml"))
        .unwrap()
        .replace("/opt/containerd", inside("/opt/containerd").to_str().unwrap());
    std::fs::write(inside("/etc/containerd/conf.d/atproto-verifier.toml"), fragment).unwrap();
    let containerd = r.join("etc/containerd/config.toml");
    std::fs::write(&containerd, format!("version = 3\nimports = [{:?}]\n", inside("/etc/containerd/conf.d/*.toml"))).unwrap();
    let config = r.join("doctor.toml");
    std::fs::write(
        &config,
        format!(
            "policy = {:?}\ncache_dir = {:?}\naudit_log = {:?}\n",
            inside("/etc/atproto-verifier/trust-policy.yaml"),
            inside("/var/lib/atproto-verifier"),
            inside("/var/log/atproto-verifier/audit.jsonl")
        ),
    )
    .unwrap();
    let out = Command::new(inside("/usr/bin/atproto-verifier"))
        .args(["doctor", "--config", config.to_str().unwrap(), "--containerd-config", containerd.to_str().unwrap()])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "doctor against the installed package:\n{report}");
    assert!(report.contains("holds this verifier") && report.contains("imported"), "{report}");

    dpkg(&["--purge", "atproto-verifier"]);
    assert!(!r.join("usr/bin/atproto-verifier").exists() && !r.join("var/lib/atproto-verifier").exists(), "purge removes the package and its state");
}
