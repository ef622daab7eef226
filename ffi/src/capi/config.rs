//! `qpq_config`: what `qpq_client_open` needs, set field by field (core's
//! `ClientConfigBuilder`). Nothing is checked until `qpq_client_open`.

use std::ffi::c_char;
use std::sync::Mutex;

use qpq_core::{ClientConfig, Error};

use super::{arg, bytes_arg, entry, free, out, owned, str_arg};
use crate::error::{self, qpq_error};

/// A client configuration under construction. Thread-safe; free with `qpq_config_free`.
pub struct qpq_config(pub(crate) Mutex<qpq_core::ClientConfigBuilder>);

impl qpq_config {
    /// The finished config (`InvalidInput` when no store key was set or a value is malformed).
    pub(crate) fn build(&self) -> Result<ClientConfig, Error> {
        self.builder()?.clone().build()
    }

    fn builder(&self) -> Result<std::sync::MutexGuard<'_, qpq_core::ClientConfigBuilder>, Error> {
        self.0.lock().map_err(|_| error::invalid("the config was poisoned by a panic".into()))
    }
}

/// Applies one builder step to `config`.
fn set(
    config: *mut qpq_config,
    f: impl FnOnce(qpq_core::ClientConfigBuilder) -> Result<qpq_core::ClientConfigBuilder, Error>,
) -> *mut qpq_error {
    entry(|| {
        let mut b = arg(config, "config")?.builder()?;
        *b = f(b.clone())?;
        Ok(())
    })
}

/// A new config for the store in `data_dir` (one account per directory, created if missing)
/// and the server at `server_addr` ("host:port"). Defaults: server name "localhost", 15 s
/// request timeout, the WebPKI roots, no store key (set one). Owned: free with
/// `qpq_config_free`.
#[no_mangle]
pub extern "C" fn qpq_config_new(
    data_dir: *const c_char, server_addr: *const c_char, out_config: *mut *mut qpq_config,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_config, "out_config", std::ptr::null_mut())?;
        let b = ClientConfig::builder(str_arg(data_dir, "data_dir")?, str_arg(server_addr, "server_addr")?);
        *slot = owned(qpq_config(Mutex::new(b)));
        Ok(())
    })
}

/// The store is unlocked by this passphrase (Argon2id-stretched).
#[no_mangle]
pub extern "C" fn qpq_config_set_passphrase(config: *mut qpq_config, passphrase: *const c_char) -> *mut qpq_error {
    set(config, |b| Ok(b.passphrase(str_arg(passphrase, "passphrase")?)))
}

/// The store is unlocked by this raw key of exactly 32 bytes (e.g. from a keystore).
#[no_mangle]
pub extern "C" fn qpq_config_set_raw_key(config: *mut qpq_config, key: *const u8, key_len: usize) -> *mut qpq_error {
    set(config, |b| {
        let key = <[u8; 32]>::try_from(bytes_arg(key, key_len, "key")?)
            .map_err(|_| error::invalid(format!("a raw key has 32 bytes, not {key_len}")))?;
        Ok(b.raw_key(key))
    })
}

/// The TLS server name to verify (default "localhost").
#[no_mangle]
pub extern "C" fn qpq_config_set_server_name(config: *mut qpq_config, name: *const c_char) -> *mut qpq_error {
    set(config, |b| Ok(b.server_name(str_arg(name, "name")?)))
}

/// Trust exactly the DER certificate in this file (read when connecting).
#[no_mangle]
pub extern "C" fn qpq_config_set_pinned_cert_file(config: *mut qpq_config, path: *const c_char) -> *mut qpq_error {
    set(config, |b| Ok(b.pinned_cert_file(str_arg(path, "path")?)))
}

/// Trust exactly this DER certificate (`der_len` bytes at `der`, copied).
#[no_mangle]
pub extern "C" fn qpq_config_set_pinned_cert_der(
    config: *mut qpq_config, der: *const u8, der_len: usize,
) -> *mut qpq_error {
    set(config, |b| Ok(b.pinned_cert_der(bytes_arg(der, der_len, "der")?.to_vec())))
}

/// Trust the certificate with this SHA-256 fingerprint (64 hex digits, ':' allowed; a
/// malformed one makes `qpq_client_open` fail with `QPQ_ERROR_INVALID_INPUT`).
#[no_mangle]
pub extern "C" fn qpq_config_set_fingerprint(config: *mut qpq_config, hex: *const c_char) -> *mut qpq_error {
    set(config, |b| Ok(b.fingerprint(str_arg(hex, "hex")?)))
}

/// Trust the WebPKI roots (the default).
#[no_mangle]
pub extern "C" fn qpq_config_set_system_roots(config: *mut qpq_config) -> *mut qpq_error {
    set(config, |b| Ok(b.system_roots()))
}

/// Deadline of each request in milliseconds (default 15,000; 0 is refused at open).
#[no_mangle]
pub extern "C" fn qpq_config_set_request_timeout_ms(config: *mut qpq_config, ms: u64) -> *mut qpq_error {
    set(config, |b| Ok(b.request_timeout_ms(ms)))
}

/// How long `qpq_client_open` waits for a store another process holds before failing with
/// `QPQ_ERROR_BUSY` (default 0: at once).
#[no_mangle]
pub extern "C" fn qpq_config_set_lock_timeout_ms(config: *mut qpq_config, ms: u64) -> *mut qpq_error {
    set(config, |b| Ok(b.lock_timeout_ms(ms)))
}

/// Frees a config (the passphrase or key in it is zeroized); NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_config_free(config: *mut qpq_config) {
    free(config)
}
