//! TLS for the API: the operator's PEM certificate and key (`api.tlsCert`, `api.tlsKey`), or
//! a self-signed pair made in the data directory on first start (`tls.crt`, `tls.key`,
//! the key 0600) whose SHA-256 fingerprint the node prints so clients can pin it.
//!
//! What this cannot do: renew certificates or reload them while running (restart the node),
//! or ask for client certificates.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::ApiConfig;

/// Largest PEM file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} {path}: cannot read it: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS {what} {path}: {reason}")]
    Bad {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS: cannot write the self-signed {what} {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Other(String),
}

/// A server configuration and what to tell people about its certificate.
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate (DER), as `AB:CD:...`.
    pub fingerprint: String,
    /// Whether the certificate was made just now.
    pub generated: bool,
}

/// Makes the ring provider the process default (once; later calls do nothing).
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way a ring provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The TLS setup `api` asks for: its files, or the data directory's self-signed pair
/// (made when missing).
pub fn setup(api: &ApiConfig, data_dir: &Path) -> Result<TlsSetup, TlsError> {
    install_crypto_provider();
    let (cert_path, key_path, generated) = match (&api.tls_cert, &api.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        (None, None) => {
            let (c, k) = (data_dir.join("tls.crt"), data_dir.join("tls.key"));
            let generated = ensure_self_signed(api, &c, &k)?;
            (c, k, generated)
        }
        _ => {
            return Err(TlsError::Other(
                "set both api.tlsCert and api.tlsKey, or neither for a self-signed certificate"
                    .into(),
            ))
        }
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let fingerprint = certs
        .first()
        .map(|c| fingerprint(c.as_ref()))
        .unwrap_or_default();
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Other(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Bad {
                what: "key",
                path: key_path.clone(),
                reason: format!("does not fit certificate {}: {e}", cert_path.display()),
            })?;
    // HTTP/1.1 only, as the listener serves.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        cert_path,
        fingerprint,
        generated,
    })
}

fn read_limited(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Bad {
            what,
            path: path.to_path_buf(),
            reason: format!("over the {MAX_PEM_BYTES}-byte limit"),
        });
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_limited("certificate", path)?;
    let bad = |reason: String| TlsError::Bad {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no CERTIFICATE block: give a PEM certificate chain, leaf first".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_limited("key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Bad {
        what: "key",
        path: path.to_path_buf(),
        reason: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })
}

/// SHA-256 of `der` as upper-case hex pairs joined by colons (as `openssl x509 -fingerprint
/// -sha256` prints it).
pub fn fingerprint(der: &[u8]) -> String {
    let hash = match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(s) => s.common.hash_provider.hash(der),
        #[allow(unreachable_patterns)]
        _ => return String::new(),
    };
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes `cert` and `key` unless both exist; returns whether it made them.
fn ensure_self_signed(api: &ApiConfig, cert: &Path, key: &Path) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (has_cert, _) => {
            let (present, missing) = if has_cert { (cert, key) } else { (key, cert) };
            return Err(TlsError::Other(format!(
                "{} exists without {}: remove it so a new self-signed pair is made, or set \
                 api.tlsCert and api.tlsKey",
                present.display(),
                missing.display()
            )));
        }
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !api.host.is_unspecified() && !api.host.is_loopback() {
        names.push(api.host.to_string());
    }
    if let Some(h) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 63
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
    {
        if !names.contains(&h) {
            names.push(h);
        }
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::Other(format!("cannot make a self-signed certificate: {e}")))?;
    write_atomic("key", key, made.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomic("certificate", cert, made.cert.pem().as_bytes(), 0o644)?;
    Ok(true)
}

fn write_atomic(what: &'static str, path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_err = |source| TlsError::Write {
        what,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn api_tls() -> ApiConfig {
        ApiConfig {
            tls_enabled: true,
            ..ApiConfig::default()
        }
    }

    #[test]
    fn a_self_signed_pair_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = setup(&api_tls(), dir.path()).unwrap();
        assert!(first.generated);
        assert_eq!(first.cert_path, dir.path().join("tls.crt"));
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1, "{}", first.fingerprint);
        let mode = std::fs::metadata(dir.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = setup(&api_tls(), dir.path()).unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint);

        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        let err = setup(&api_tls(), dir.path()).err().unwrap().to_string();
        assert!(err.contains("tls.crt exists without"), "{err}");
    }

    #[test]
    fn bad_or_missing_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        setup(&api_tls(), dir.path()).unwrap();
        let good_cert = dir.path().join("tls.crt");
        let good_key = dir.path().join("tls.key");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let other = tempfile::tempdir().unwrap();
        setup(&api_tls(), other.path()).unwrap();
        let other_key = other.path().join("tls.key");
        let missing = dir.path().join("missing.pem");
        for (cert, key, needle) in [
            (&junk, &good_key, "no CERTIFICATE block"),
            (&good_cert, &junk, "no usable PEM private key"),
            (&missing, &good_key, "cannot read"),
            (&good_cert, &missing, "cannot read"),
            (&good_cert, &other_key, "does not fit"),
        ] {
            let api = ApiConfig {
                tls_cert: Some(cert.clone()),
                tls_key: Some(key.clone()),
                ..api_tls()
            };
            let err = setup(&api, dir.path()).err().unwrap().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn fingerprints_are_sha256() {
        // SHA-256("abc").
        assert_eq!(
            fingerprint(b"abc").replace(':', ""),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
    }
}
