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
}
