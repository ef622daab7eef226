//! The OPAQUE (RFC 9807) ciphersuite used for account registration and login.
//!
//! Client and server must both use [`OpaqueSuite`] with the `opaque_ke`
//! version re-exported at the crate root ([`crate::opaque_ke`]); any other
//! combination produces messages the other side cannot parse.
//!
//! The suite is ristretto255 for the OPRF and the key exchange group, 3DH with
//! SHA-512 as the key exchange, and Argon2id with the `argon2` crate's default
//! parameters (19 MiB, 2 passes, 1 lane) as the key stretching function.
//! Changing any of these invalidates every stored password file.

/// The qpq OPAQUE ciphersuite: ristretto255, TripleDH(SHA-512), Argon2id.
///
/// Use it as the type parameter of every `opaque_ke` type, for example
/// `opaque_ke::ClientRegistration::<OpaqueSuite>::start(..)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpaqueSuite;

impl opaque_ke::CipherSuite for OpaqueSuite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// The client's half of OPAQUE, over serialized messages: what `qpq-core` and the server's test
/// kit both run, written once. Each step takes and returns the bytes the wire carries
/// (`qpq.v1.Opaque*` fields); the states hold the OPRF blind and are consumed by `finish`.
///
/// What it does not do: talk to a server, choose the username rule or derive keys from the
/// export key; callers do that.
pub mod client {
    use rand_core::CryptoRngCore;
    use zeroize::Zeroizing;

    use super::OpaqueSuite;
    use crate::CryptoError;
    use opaque_ke::{
        ClientLogin, ClientLoginFinishParameters, ClientRegistration,
        ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
    };

    /// A registration in progress: holds the OPRF blind until [`Registration::finish`].
    pub struct Registration(ClientRegistration<OpaqueSuite>);

    /// A login in progress: holds the OPRF blind and the key exchange state until
    /// [`Login::finish`].
    pub struct Login(ClientLogin<OpaqueSuite>);

    /// A finished client step: the message to send and the OPAQUE export key.
    pub struct Finished {
        /// `registration_upload` (registration) or `ke3` (login), serialized.
        pub message: Vec<u8>,
        /// The export key: the same for every login with this password and registration;
        /// secret (zeroized on drop).
        pub export_key: Zeroizing<Vec<u8>>,
    }

    impl core::fmt::Debug for Registration {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("Registration { .. }")
        }
    }

    impl core::fmt::Debug for Login {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("Login { .. }")
        }
    }

    impl core::fmt::Debug for Finished {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("Finished")
                .field("message_len", &self.message.len())
                .finish_non_exhaustive()
        }
    }

    impl Registration {
        /// Starts a registration: returns the state and the `registration_request` bytes.
        pub fn start<R: CryptoRngCore + ?Sized>(
            rng: &mut R,
            password: &[u8],
        ) -> Result<(Registration, Vec<u8>), CryptoError> {
            let start = ClientRegistration::<OpaqueSuite>::start(&mut Rng(rng), password)
                .map_err(|_| CryptoError::Opaque)?;
            let request = start.message.serialize().to_vec();
            Ok((Registration(start.state), request))
        }

        /// Finishes with the server's `registration_response`: the `registration_upload` to
        /// send and the export key. A malformed response gives [`CryptoError::Opaque`].
        pub fn finish<R: CryptoRngCore + ?Sized>(
            self,
            rng: &mut R,
            password: &[u8],
            registration_response: &[u8],
        ) -> Result<Finished, CryptoError> {
            let response = RegistrationResponse::<OpaqueSuite>::deserialize(registration_response)
                .map_err(|_| CryptoError::Opaque)?;
            let fin = self
                .0
                .finish(
                    &mut Rng(rng),
                    password,
                    response,
                    ClientRegistrationFinishParameters::default(),
                )
                .map_err(|_| CryptoError::Opaque)?;
            Ok(Finished {
                message: fin.message.serialize().to_vec(),
                export_key: Zeroizing::new(fin.export_key.to_vec()),
            })
        }
    }

    impl Login {
        /// Starts a login: returns the state and the `ke1` bytes.
        pub fn start<R: CryptoRngCore + ?Sized>(
            rng: &mut R,
            password: &[u8],
        ) -> Result<(Login, Vec<u8>), CryptoError> {
            let start = ClientLogin::<OpaqueSuite>::start(&mut Rng(rng), password)
                .map_err(|_| CryptoError::Opaque)?;
            let ke1 = start.message.serialize().to_vec();
            Ok((Login(start.state), ke1))
        }

        /// Finishes with the server's `ke2`: the `ke3` to send and the export key. A wrong
        /// password, an unknown username (the server answers with a decoy) and a malformed or
        /// tampered `ke2` all give the same [`CryptoError::OpaqueLogin`].
        pub fn finish<R: CryptoRngCore + ?Sized>(
            self,
            rng: &mut R,
            password: &[u8],
            ke2: &[u8],
        ) -> Result<Finished, CryptoError> {
            let ke2 = CredentialResponse::<OpaqueSuite>::deserialize(ke2)
                .map_err(|_| CryptoError::OpaqueLogin)?;
            let fin = self
                .0
                .finish(
                    &mut Rng(rng),
                    password,
                    ke2,
                    ClientLoginFinishParameters::default(),
                )
                .map_err(|_| CryptoError::OpaqueLogin)?;
            Ok(Finished {
                message: fin.message.serialize().to_vec(),
                export_key: Zeroizing::new(fin.export_key.to_vec()),
            })
        }
    }

    /// Adapts an unsized `CryptoRngCore` to the sized `RngCore + CryptoRng` opaque-ke takes.
    struct Rng<'a, R: CryptoRngCore + ?Sized>(&'a mut R);

    impl<R: CryptoRngCore + ?Sized> rand_core::RngCore for Rng<'_, R> {
        fn next_u32(&mut self) -> u32 {
            self.0.next_u32()
        }
        fn next_u64(&mut self) -> u64 {
            self.0.next_u64()
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            self.0.fill_bytes(dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.0.try_fill_bytes(dest)
        }
    }

    impl<R: CryptoRngCore + ?Sized> rand_core::CryptoRng for Rng<'_, R> {}
}

#[cfg(test)]
mod tests {
    use super::OpaqueSuite;
    use opaque_ke::errors::ProtocolError;
    use opaque_ke::{
        ClientLogin, ClientLoginFinishParameters, ClientRegistration,
        ClientRegistrationFinishParameters, ServerLogin, ServerLoginParameters, ServerRegistration,
        ServerSetup,
    };
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const USER: &[u8] = b"alice";

    /// Registers `password` and returns the server setup and the serialized
    /// password file, going through the serialized messages as a real
    /// client/server pair would.
    fn register(rng: &mut ChaCha20Rng, password: &[u8]) -> (ServerSetup<OpaqueSuite>, Vec<u8>) {
        let setup = ServerSetup::<OpaqueSuite>::new(rng);
        let client_start =
            ClientRegistration::<OpaqueSuite>::start(rng, password).expect("client reg start");
        let request =
            opaque_ke::RegistrationRequest::deserialize(&client_start.message.serialize())
                .expect("request parses");
        let server_start =
            ServerRegistration::<OpaqueSuite>::start(&setup, request, USER).expect("server start");
        let response =
            opaque_ke::RegistrationResponse::deserialize(&server_start.message.serialize())
                .expect("response parses");
        let client_finish = client_start
            .state
            .finish(
                rng,
                password,
                response,
                ClientRegistrationFinishParameters::default(),
            )
            .expect("client reg finish");
        let upload = opaque_ke::RegistrationUpload::deserialize(&client_finish.message.serialize())
            .expect("upload parses");
        let file = ServerRegistration::<OpaqueSuite>::finish(upload);
        (setup, file.serialize().to_vec())
    }

    #[test]
    fn register_and_login_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (setup, file) = register(&mut rng, b"correct horse");

        let client_start =
            ClientLogin::<OpaqueSuite>::start(&mut rng, b"correct horse").expect("login start");
        let file = ServerRegistration::<OpaqueSuite>::deserialize(&file).expect("file parses");
        let server_start = ServerLogin::start(
            &mut rng,
            &setup,
            Some(file),
            client_start.message,
            USER,
            ServerLoginParameters::default(),
        )
        .expect("server login start");
        let client_finish = client_start
            .state
            .finish(
                &mut rng,
                b"correct horse",
                server_start.message,
                ClientLoginFinishParameters::default(),
            )
            .expect("client login finish");
        let server_finish = server_start
            .state
            .finish(client_finish.message, ServerLoginParameters::default())
            .expect("server login finish");
        assert_eq!(client_finish.session_key, server_finish.session_key);
        assert_eq!(client_finish.session_key.len(), 64);
    }

    #[test]
    fn wrong_password_fails_at_client_finish() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (setup, file) = register(&mut rng, b"correct horse");

        let client_start =
            ClientLogin::<OpaqueSuite>::start(&mut rng, b"battery staple").expect("login start");
        let file = ServerRegistration::<OpaqueSuite>::deserialize(&file).expect("file parses");
        let server_start = ServerLogin::start(
            &mut rng,
            &setup,
            Some(file),
            client_start.message,
            USER,
            ServerLoginParameters::default(),
        )
        .expect("server login start");
        let result = client_start.state.finish(
            &mut rng,
            b"battery staple",
            server_start.message,
            ClientLoginFinishParameters::default(),
        );
        assert!(matches!(result, Err(ProtocolError::InvalidLoginError)));
    }

    #[test]
    fn unknown_user_fails_at_client_finish() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let setup = ServerSetup::<OpaqueSuite>::new(&mut rng);
        let client_start =
            ClientLogin::<OpaqueSuite>::start(&mut rng, b"anything").expect("login start");
        let server_start = ServerLogin::start(
            &mut rng,
            &setup,
            None,
            client_start.message,
            b"nobody",
            ServerLoginParameters::default(),
        )
        .expect("server login start with dummy file");
        let result = client_start.state.finish(
            &mut rng,
            b"anything",
            server_start.message,
            ClientLoginFinishParameters::default(),
        );
        assert!(matches!(result, Err(ProtocolError::InvalidLoginError)));
    }
    #[test]
    fn client_flow_registers_and_logs_in_through_bytes() {
        use super::client::{Login, Registration};
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let setup = ServerSetup::<OpaqueSuite>::new(&mut rng);
        let (reg, request) = Registration::start(&mut rng, b"pw").expect("start");
        let request = opaque_ke::RegistrationRequest::deserialize(&request).expect("request");
        let resp = ServerRegistration::<OpaqueSuite>::start(&setup, request, USER).expect("srv");
        let fin = reg
            .finish(&mut rng, b"pw", &resp.message.serialize())
            .expect("finish");
        let upload = opaque_ke::RegistrationUpload::deserialize(&fin.message).expect("upload");
        let file = ServerRegistration::<OpaqueSuite>::finish(upload);

        let login = |rng: &mut ChaCha20Rng, pw: &[u8]| {
            let (state, ke1) = Login::start(rng, pw).expect("login start");
            let ke1 = opaque_ke::CredentialRequest::deserialize(&ke1).expect("ke1");
            let srv = ServerLogin::start(
                rng,
                &setup,
                Some(file.clone()),
                ke1,
                USER,
                ServerLoginParameters::default(),
            )
            .expect("server login start");
            state.finish(rng, pw, &srv.message.serialize())
        };
        let ok = login(&mut rng, b"pw").expect("right password");
        assert_eq!(&ok.export_key[..], &fin.export_key[..]);
        assert_eq!(
            login(&mut rng, b"wrong").err(),
            Some(crate::CryptoError::OpaqueLogin)
        );
        let (state, _) = Login::start(&mut rng, b"pw").expect("login start");
        assert_eq!(
            state.finish(&mut rng, b"pw", b"garbage").err(),
            Some(crate::CryptoError::OpaqueLogin)
        );
        let (reg, _) = Registration::start(&mut rng, b"pw").expect("start");
        assert_eq!(
            reg.finish(&mut rng, b"pw", b"garbage").err(),
            Some(crate::CryptoError::Opaque)
        );
    }
}
