//! Account: OPAQUE registration and login, the session token, logout and KeyPackage top-up.

use std::time::Duration;

use bytes::Bytes;
use hkdf::Hkdf;
use qpq_crypto::identity::IdentityKey;
use qpq_crypto::opaque::client as opaque;
use qpq_proto::{method, v1, Status};
use rand::rngs::OsRng;
use sha2::Digest as _;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::*;
use crate::error::{AuthError, Error, ErrorCode};
use crate::mls;
use crate::types::Account;

impl Session {
    pub(crate) async fn register(&self, username: &str, password: &str) -> Result<Account, Error> {
        let _ops = self.ops().await;
        let username = &check_username(username)?;
        check_password(password)?;
        let device = {
            let e = self.engine()?;
            e.check_store_owner(username)?;
            e.my_device()
        };
        let (registration, request) = opaque::Registration::start(&mut OsRng, password.as_bytes())
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let r: v1::OpaqueRegisterStartResponse = self
            .net
            .call(
                method::OPAQUE_REGISTER_START,
                &v1::OpaqueRegisterStartRequest {
                    username: username.into(),
                    registration_request: Bytes::from(request),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await
            .map_err(|e| taken_as_conflict(e, username))?;
        let fin = registration
            .finish(&mut OsRng, password.as_bytes(), &r.registration_response)
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let identity = identity_from_export_key(&fin.export_key);
        let upload = fin.message.clone();
        // Proof of possession of both keys (issue 17 item 12), bound to this registration.
        let proof = qpq_proto::key_proof::register(
            username,
            &Sha256::digest(&upload),
            &identity.public_key(),
            &device,
        );
        let device_signature = self.engine()?.keys.device.sign(&proof);
        let _: v1::OpaqueRegisterFinishResponse = self
            .net
            .call(
                method::OPAQUE_REGISTER_FINISH,
                &v1::OpaqueRegisterFinishRequest {
                    username: username.into(),
                    registration_upload: Bytes::from(upload),
                    identity_key: Bytes::copy_from_slice(&identity.public_key()),
                    device_key: Bytes::copy_from_slice(&device),
                    identity_signature: Bytes::copy_from_slice(&identity.sign(&proof)),
                    device_signature: Bytes::copy_from_slice(&device_signature),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await
            // Today's server answers RegisterStart the same for taken names (issue 17 item 8);
            // the name fails here.
            .map_err(|e| taken_as_conflict(e, username))?;
        self.login_locked(username, password).await
    }

    pub(crate) async fn login(&self, username: &str, password: &str) -> Result<Account, Error> {
        let _ops = self.ops().await;
        self.login_locked(username, password).await
    }

    /// Login with the operation lock already held.
    async fn login_locked(&self, username: &str, password: &str) -> Result<Account, Error> {
        let username = &check_username(username)?;
        check_password(password)?;
        let (device, old_identity) = {
            let e = self.engine()?;
            e.check_store_owner(username)?;
            (
                e.my_device(),
                e.keys.identity.as_ref().map(|k| k.public_key()),
            )
        };
        let (login, ke1) = opaque::Login::start(&mut OsRng, password.as_bytes())
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let r: v1::OpaqueLoginStartResponse = self
            .net
            .call(
                method::OPAQUE_LOGIN_START,
                &v1::OpaqueLoginStartRequest {
                    username: username.into(),
                    ke1: Bytes::from(ke1),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await?;
        let fin = match login.finish(&mut OsRng, password.as_bytes(), &r.ke2) {
            Ok(fin) => fin,
            Err(_) => {
                // Wrong password: OPAQUE fails here, on the client. Tell the server (an empty
                // KE3 ends the attempt as failed), so its failed-login count and limits see
                // it; best effort, the answer is Unauthorized either way.
                let _: Result<v1::OpaqueLoginFinishResponse, _> = self
                    .net
                    .call(
                        method::OPAQUE_LOGIN_FINISH,
                        &v1::OpaqueLoginFinishRequest {
                            login_id: r.login_id,
                            ke3: Bytes::new(),
                            device_key: Bytes::copy_from_slice(&device),
                            device_signature: Bytes::new(),
                        },
                        None,
                        Duration::ZERO,
                        false,
                    )
                    .await;
                return Err(AuthError::BadCredentials.into());
            }
        };
        let identity = identity_from_export_key(&fin.export_key);
        if let Some(old) = old_identity {
            if old != identity.public_key() {
                return Err(Error::crypto(
                    "the account identity differs from the one in this store",
                ));
            }
        }
        let proof = qpq_proto::key_proof::login_device(&r.login_id, &device);
        let device_signature = self.engine()?.keys.device.sign(&proof);
        let resp: v1::OpaqueLoginFinishResponse = self
            .net
            .call(
                method::OPAQUE_LOGIN_FINISH,
                &v1::OpaqueLoginFinishRequest {
                    login_id: r.login_id,
                    ke3: Bytes::from(fin.message.clone()),
                    device_key: Bytes::copy_from_slice(&device),
                    device_signature: Bytes::copy_from_slice(&device_signature),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await
            .map_err(|e| match e.status() {
                Some(Status::Unauthorized) => AuthError::BadCredentials.into(),
                _ => Error::from(e),
            })?;
        let token = Zeroizing::new(resp.session_token.to_vec());
        let hybrid_public = {
            let mut e = self.engine()?;
            // The server accepted: only now does a new store reach the disk.
            e.store.persist()?;
            e.set_logged_in(username, identity, token)?
        };
        let _: v1::UploadHybridKeyResponse = self
            .call(
                method::UPLOAD_HYBRID_KEY,
                &v1::UploadHybridKeyRequest {
                    hybrid_public_key: Bytes::from(hybrid_public),
                },
            )
            .await?;
        self.replenish_key_packages_locked(true).await?;
        self.engine()?
            .account()
            .ok_or_else(|| Error::internal("account missing after login"))
    }

    pub(crate) async fn logout(&self) -> Result<(), Error> {
        let _ops = self.ops().await;
        if self.engine()?.logged_in() {
            let r: Result<v1::LogoutResponse, Error> =
                self.call(method::LOGOUT, &v1::LogoutRequest {}).await;
            if let Err(e) = r {
                if e.code() != ErrorCode::Unauthorized {
                    tracing::debug!("logout call failed: {e}");
                }
            }
        }
        let mut e = self.engine()?;
        e.keys.token = None;
        e.store.delete_meta(META_TOKEN)?;
        Ok(())
    }

    /// Keeps ~20 KeyPackages per suite on the server (the caller holds the operation lock).
    pub(crate) async fn replenish_key_packages_locked(&self, force: bool) -> Result<(), Error> {
        {
            let mut e = self.engine()?;
            if !force {
                if let Some(t) = e.kp_checked {
                    if t.elapsed() < Duration::from_secs(30) {
                        return Ok(());
                    }
                }
            }
            e.kp_checked = Some(std::time::Instant::now());
        }
        for cs in mls::SUITES {
            let suite = u32::from(u16::from(cs));
            if force {
                // At each login a fresh last-resort KeyPackage replaces the server's one
                // (rotation after use; the server keeps one per device and suite).
                let last = {
                    let e = self.engine()?;
                    mls::last_resort_key_package(&e.provider(), &e.keys.device, cs)?
                };
                let _: v1::UploadKeyPackageResponse = self
                    .call(
                        method::UPLOAD_KEY_PACKAGE,
                        &v1::UploadKeyPackageRequest {
                            key_packages: vec![Bytes::from(last)],
                            ciphersuite: suite,
                        },
                    )
                    .await?;
            }
            let count: v1::UploadKeyPackageResponse = self
                .call(
                    method::UPLOAD_KEY_PACKAGE,
                    &v1::UploadKeyPackageRequest {
                        key_packages: vec![],
                        ciphersuite: suite,
                    },
                )
                .await?;
            if count.stored >= KEY_PACKAGE_LOW {
                continue;
            }
            let n = (KEY_PACKAGE_TARGET - count.stored) as usize;
            let kps = {
                let e = self.engine()?;
                mls::key_packages(&e.provider(), &e.keys.device, cs, n)?
            };
            let _: v1::UploadKeyPackageResponse = self
                .call(
                    method::UPLOAD_KEY_PACKAGE,
                    &v1::UploadKeyPackageRequest {
                        key_packages: kps.into_iter().map(Bytes::from).collect(),
                        ciphersuite: suite,
                    },
                )
                .await?;
        }
        Ok(())
    }
}

impl Engine {
    fn check_store_owner(&self, username: &str) -> Result<(), Error> {
        if let Some(u) = &self.keys.username {
            if !u.eq_ignore_ascii_case(username) {
                return Err(Error::invalid(format!(
                    "this store belongs to {u}; use another data_dir for another account"
                )));
            }
        }
        Ok(())
    }

    /// Stores the account after a successful login (one transaction) and returns the hybrid
    /// public key to upload.
    fn set_logged_in(
        &mut self,
        username: &str,
        identity: IdentityKey,
        token: Zeroizing<Vec<u8>>,
    ) -> Result<Vec<u8>, Error> {
        let device = self.my_device();
        self.store.transaction(|s| -> Result<(), Error> {
            s.set_meta(META_USERNAME, username.as_bytes())?;
            s.set_meta(META_IDENTITY, &identity.to_bytes()[..])?;
            s.set_meta(META_TOKEN, &token)?;
            s.put_device(&device, &identity.public_key(), username)?;
            Ok(())
        })?;
        self.keys.username = Some(username.to_string());
        self.keys.identity = Some(identity);
        self.keys.token = Some(token);
        Ok(self.keys.hybrid.public_key().to_bytes())
    }
}

fn identity_from_export_key(export_key: &[u8]) -> IdentityKey {
    let hk = Hkdf::<Sha256>::new(None, export_key);
    let mut seed = Zeroizing::new([0u8; 32]);
    hk.expand(IDENTITY_LABEL, &mut seed[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    IdentityKey::from_bytes(&seed)
}

/// A server Conflict during registration means the username is taken (at RegisterStart on
/// older servers, at RegisterFinish on today's).
fn taken_as_conflict(e: crate::error::NetError, username: &str) -> Error {
    match e.status() {
        Some(Status::Conflict) => Error::new(
            ErrorCode::Conflict,
            format!("the username {username} is taken"),
        ),
        _ => e.into(),
    }
}

/// An empty password is refused before anything is sent or stored.
fn check_password(p: &str) -> Result<(), Error> {
    if p.is_empty() {
        return Err(Error::invalid("an empty password is refused"));
    }
    Ok(())
}

/// The username rule of client and server (`qpq_proto::username`): returns the normalised
/// form (trimmed, ASCII lower case) that is sent, signed and stored.
fn check_username(u: &str) -> Result<String, Error> {
    qpq_proto::username::normalize(u).map_err(|e| Error::invalid(e.to_string()))
}
