//! TLS 1.3 material: a configured certificate, or a self-signed one generated on first start.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// A certificate chain and key ready for rustls.
pub struct TlsMaterial {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl TlsMaterial {
    /// SHA-256 of the leaf certificate, lowercase hex (what clients pin).
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default()
    }
}

fn read_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if bytes.starts_with(b"-----") {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("invalid PEM certificate {}: {e}", p.display()))
    } else {
        Ok(vec![CertificateDer::from(bytes)])
    }
}

fn read_key(p: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if bytes.starts_with(b"-----") {
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| format!("invalid PEM key {}: {e}", p.display()))
    } else {
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bytes)))
    }
}

/// Loads `--tls-cert/--tls-key`, or `data/server-cert.der` + `data/server-key.der`, generating
/// a self-signed certificate for localhost, 127.0.0.1 and ::1 when those do not exist.
pub fn load_or_generate(config: &Config) -> Result<TlsMaterial, String> {
    if !config.tls_cert.as_os_str().is_empty() {
        if config.tls_key.as_os_str().is_empty() {
            return Err("--tls-cert needs --tls-key".into());
        }
        return Ok(TlsMaterial {
            chain: read_certs(&config.tls_cert)?,
            key: read_key(&config.tls_key)?,
        });
    }
    let cert_path = config.data_dir.join("server-cert.der");
    let key_path = config.data_dir.join("server-key.der");
    if cert_path.exists() && key_path.exists() {
        return Ok(TlsMaterial {
            chain: read_certs(&cert_path)?,
            key: read_key(&key_path)?,
        });
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let cert = generated.cert.der().to_vec();
    let key = generated.key_pair.serialize_der();
    write_private(&key_path, &key)?;
    std::fs::write(&cert_path, &cert)
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    Ok(TlsMaterial {
        chain: vec![CertificateDer::from(cert)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    })
}

fn write_private(p: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(p)
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", p.display()))
}

/// A rustls server config: TLS 1.3 only, ALPN `qpq`, no client certificates.
pub fn server_config(m: TlsMaterial) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(m.chain, m.key)
        .map_err(|e| format!("invalid certificate or key: {e}"))?;
    tls.alpn_protocols = vec![qpq_proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    Ok(Arc::new(tls))
}
