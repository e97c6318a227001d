//! Test certificates made with the openssl CLI (tests/serve.rs, the serve_load bench,
//! tests/kubernetes): a P-256 CA per name, and leaf certificates it issues for 127.0.0.1 and
//! localhost, usable by servers and clients (serverAuth + clientAuth, as Gatekeeper's are).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// Runs openssl in `dir`; a failure is a test failure that says what to install.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is missing: apt-get install openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `<ca>.crt` and `<ca>.key` in `dir`, made once.
pub fn ca(dir: &Path, ca: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let crt = dir.join(format!("{ca}.crt"));
    if !crt.exists() {
        let (key, out, subject) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN={ca}"));
        openssl(
            dir,
            &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", &key, "-out", &out, "-subj", &subject, "-days", "2"],
        );
    }
    crt
}

/// A leaf `<name>.crt` / `<name>.key` issued by `ca` (made if needed); returns (cert, key).
pub fn issue(dir: &Path, ca_name: &str, name: &str) -> (PathBuf, PathBuf) {
    ca(dir, ca_name);
    std::fs::write(dir.join("ext.cnf"), "[leaf]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n").unwrap();
    let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
    let (ca_crt, ca_key, subject) = (format!("{ca_name}.crt"), format!("{ca_name}.key"), format!("/CN={name}"));
    openssl(dir, &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "leaf",
        ],
    );
    (dir.join(crt), dir.join(key))
}
