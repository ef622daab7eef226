//! Account: OPAQUE registration and login, the session token, logout and KeyPackage top-up.

use std::time::Duration;

use bytes::Bytes;
use qpq_proto::{method, v1, Status};
use rand::rngs::OsRng;
use sha2::Digest as _;
use zeroize::Zeroizing;

use super::*;
use crate::error::{AuthError, Error, ErrorCode};
use crate::mls;
use crate::net::Net;
use crate::types::Account;

impl Engine {
    pub(crate) async fn register(
        &mut self,
        net: &Net,
        username: &str,
        password: &str,
    ) -> Result<Account, Error> {
        check_username(username)?;
        check_password(password)?;
        self.check_store_owner(username)?;
        let start = ClientRegistration::<OpaqueSuite>::start(&mut OsRng, password.as_bytes())
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let r: v1::OpaqueRegisterStartResponse = net
            .call(
                method::OPAQUE_REGISTER_START,
                &v1::OpaqueRegisterStartRequest {
                    username: username.into(),
                    registration_request: Bytes::from(start.message.serialize().to_vec()),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await
            .map_err(|e| match e.status() {
                Some(Status::Conflict) => Error::new(
                    ErrorCode::Conflict,
                    format!("the username {username} is taken"),
                ),
                _ => e.into(),
            })?;
        let resp = RegistrationResponse::<OpaqueSuite>::deserialize(&r.registration_response)
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let fin = start
            .state
            .finish(
                &mut OsRng,
                password.as_bytes(),
                resp,
                ClientRegistrationFinishParameters::default(),
            )
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let identity = identity_from_export_key(&fin.export_key);
        let upload = fin.message.serialize().to_vec();
        // Proof of possession of both keys (issue 17 item 12), bound to this registration.
        let proof = qpq_proto::key_proof::register(
            username,
            &sha2::Sha256::digest(&upload),
            &identity.public_key(),
            &self.my_device(),
        );
        let _: v1::OpaqueRegisterFinishResponse = net
            .call(
                method::OPAQUE_REGISTER_FINISH,
                &v1::OpaqueRegisterFinishRequest {
                    username: username.into(),
                    registration_upload: Bytes::from(upload),
                    identity_key: Bytes::copy_from_slice(&identity.public_key()),
                    device_key: Bytes::copy_from_slice(&self.my_device()),
                    identity_signature: Bytes::copy_from_slice(&identity.sign(&proof)),
                    device_signature: Bytes::copy_from_slice(&self.keys.device.sign(&proof)),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await?;
        self.login(net, username, password).await
    }

    pub(super) fn check_store_owner(&self, username: &str) -> Result<(), Error> {
        if let Some(u) = &self.keys.username {
            if !u.eq_ignore_ascii_case(username) {
                return Err(Error::invalid(format!(
                    "this store belongs to {u}; use another data_dir for another account"
                )));
            }
        }
        Ok(())
    }

    pub(crate) async fn login(
        &mut self,
        net: &Net,
        username: &str,
        password: &str,
    ) -> Result<Account, Error> {
        check_username(username)?;
        check_password(password)?;
        self.check_store_owner(username)?;
        let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, password.as_bytes())
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let r: v1::OpaqueLoginStartResponse = net
            .call(
                method::OPAQUE_LOGIN_START,
                &v1::OpaqueLoginStartRequest {
                    username: username.into(),
                    ke1: Bytes::from(start.message.serialize().to_vec()),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await?;
        let ke2 = CredentialResponse::<OpaqueSuite>::deserialize(&r.ke2)
            .map_err(|_| AuthError::BadCredentials)?;
        let fin = match start.state.finish(
            &mut OsRng,
            password.as_bytes(),
            ke2,
            ClientLoginFinishParameters::default(),
        ) {
            Ok(fin) => fin,
            Err(_) => {
                // Wrong password: OPAQUE fails here, on the client. Tell the server (an empty
                // KE3 ends the attempt as failed), so its failed-login count and limits see
                // it; best effort, the answer is Unauthorized either way.
                let _: Result<v1::OpaqueLoginFinishResponse, _> = net
                    .call(
                        method::OPAQUE_LOGIN_FINISH,
                        &v1::OpaqueLoginFinishRequest {
                            login_id: r.login_id,
                            ke3: Bytes::new(),
                            device_key: Bytes::copy_from_slice(&self.my_device()),
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
        if let Some(old) = &self.keys.identity {
            if old.public_key() != identity.public_key() {
                return Err(Error::crypto(
                    "the account identity differs from the one in this store",
                ));
            }
        }
        let proof = qpq_proto::key_proof::login_device(&r.login_id, &self.my_device());
        let resp: v1::OpaqueLoginFinishResponse = net
            .call(
                method::OPAQUE_LOGIN_FINISH,
                &v1::OpaqueLoginFinishRequest {
                    login_id: r.login_id,
                    ke3: Bytes::from(fin.message.serialize().to_vec()),
                    device_key: Bytes::copy_from_slice(&self.my_device()),
                    device_signature: Bytes::copy_from_slice(&self.keys.device.sign(&proof)),
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
        // The server accepted: only now does a new store reach the disk.
        self.store.persist()?;
        self.store.set_meta(META_USERNAME, username.as_bytes())?;
        self.store
            .set_meta(META_IDENTITY, &identity.to_bytes()[..])?;
        self.store.set_meta(META_TOKEN, &token)?;
        self.store
            .put_device(&self.my_device(), &identity.public_key(), username)?;
        self.keys.username = Some(username.to_string());
        self.keys.identity = Some(identity);
        self.keys.token = Some(token);
        let _: v1::UploadHybridKeyResponse = self
            .call(
                net,
                method::UPLOAD_HYBRID_KEY,
                &v1::UploadHybridKeyRequest {
                    hybrid_public_key: Bytes::from(self.keys.hybrid.public_key().to_bytes()),
                },
            )
            .await?;
        self.replenish_key_packages(net, true).await?;
        self.account()
            .ok_or_else(|| Error::internal("account missing after login"))
    }

    pub(crate) async fn logout(&mut self, net: &Net) -> Result<(), Error> {
        if self.keys.token.is_some() {
            let r: Result<v1::LogoutResponse, Error> =
                self.call(net, method::LOGOUT, &v1::LogoutRequest {}).await;
            if let Err(e) = r {
                if e.code() != ErrorCode::Unauthorized {
                    tracing::debug!("logout call failed: {e}");
                }
            }
        }
        self.keys.token = None;
        self.store.delete_meta(META_TOKEN)?;
        Ok(())
    }

    /// Keeps ~20 KeyPackages per suite on the server.
    pub(crate) async fn replenish_key_packages(
        &mut self,
        net: &Net,
        force: bool,
    ) -> Result<(), Error> {
        if !force {
            if let Some(t) = self.kp_checked {
                if t.elapsed() < Duration::from_secs(30) {
                    return Ok(());
                }
            }
        }
        self.kp_checked = Some(std::time::Instant::now());
        for cs in mls::SUITES {
            let suite = u32::from(u16::from(cs));
            let count: v1::UploadKeyPackageResponse = self
                .call(
                    net,
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
            let kps = mls::key_packages(&self.provider(), &self.keys.device, cs, n)?;
            let _: v1::UploadKeyPackageResponse = self
                .call(
                    net,
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

fn identity_from_export_key(export_key: &[u8]) -> IdentityKey {
    let hk = Hkdf::<Sha256>::new(None, export_key);
    let mut seed = Zeroizing::new([0u8; 32]);
    hk.expand(IDENTITY_LABEL, &mut seed[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    IdentityKey::from_bytes(&seed)
}

/// An empty password is refused before anything is sent or stored.
fn check_password(p: &str) -> Result<(), Error> {
    if p.is_empty() {
        return Err(Error::invalid("an empty password is refused"));
    }
    Ok(())
}

fn check_username(u: &str) -> Result<(), Error> {
    if u.is_empty() || u.len() > 64 {
        return Err(Error::invalid("a username has 1 to 64 characters"));
    }
    Ok(())
}
