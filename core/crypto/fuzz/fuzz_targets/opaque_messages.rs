//! P-4: OPAQUE messages of the qpq suite (`OpaqueSuite`, what the server parses). The first
//! byte picks what the rest is:
//!
//! 0 RegistrationRequest, then `ServerRegistration::start` with it;
//! 1 RegistrationResponse (client side);
//! 2 RegistrationUpload, then `ServerRegistration::finish` and a password-file round trip;
//! 3 CredentialRequest (KE1), then `ServerLogin::start` with a real password file;
//! 4 CredentialRequest (KE1), then `ServerLogin::start` for an unknown user (fake KE2);
//! 5 CredentialResponse (KE2) (client side);
//! 6 CredentialFinalization (KE3), then `ServerLogin::finish` on a real pending login: only
//!   the genuine KE3 may succeed;
//! 7 a password file (`ServerRegistration`), then `ServerLogin::start` with a valid KE1.
//!
//! A message that parses re-serializes to a *prefix* of the input: opaque-ke 4.0.1's
//! `deserialize` reads the fixed-size fields it needs and ignores trailing bytes (found by this
//! target; qpq's server therefore must not rely on it to reject over-long messages).
//!
//! The fixture (server setup, one registration, one login up to KE2) is built once with a
//! seeded RNG; its Argon2 work happens only then.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qpq_crypto::opaque::OpaqueSuite;
use qpq_crypto::opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, RegistrationRequest, RegistrationResponse, RegistrationUpload, ServerLogin,
    ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const USER: &[u8] = b"alice";
const PASSWORD: &[u8] = b"correct horse battery staple";

struct Fixture {
    setup: ServerSetup<OpaqueSuite>,
    file: Vec<u8>,
    ke1: Vec<u8>,
    pending: Vec<u8>,
    ke3: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let setup = ServerSetup::<OpaqueSuite>::new(&mut rng);
        let c = ClientRegistration::<OpaqueSuite>::start(&mut rng, PASSWORD).expect("reg start");
        let s = ServerRegistration::<OpaqueSuite>::start(&setup, c.message, USER).expect("start");
        let fin = c
            .state
            .finish(
                &mut rng,
                PASSWORD,
                s.message,
                ClientRegistrationFinishParameters::default(),
            )
            .expect("reg finish");
        let file = ServerRegistration::<OpaqueSuite>::finish(fin.message);
        let login = ClientLogin::<OpaqueSuite>::start(&mut rng, PASSWORD).expect("login start");
        let ke1 = login.message.serialize().to_vec();
        let server = ServerLogin::start(
            &mut rng,
            &setup,
            Some(file.clone()),
            login.message,
            USER,
            ServerLoginParameters::default(),
        )
        .expect("server login start");
        let done = login
            .state
            .finish(
                &mut rng,
                PASSWORD,
                server.message,
                ClientLoginFinishParameters::default(),
            )
            .expect("client login finish");
        Fixture {
            setup,
            file: file.serialize().to_vec(),
            ke1,
            pending: server.state.serialize().to_vec(),
            ke3: done.message.serialize().to_vec(),
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let f = fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    match mode % 8 {
        0 => {
            if let Ok(req) = RegistrationRequest::<OpaqueSuite>::deserialize(rest) {
                assert!(
                    rest.starts_with(&req.serialize()),
                    "re-serialization is not a prefix"
                );
                let _ = ServerRegistration::<OpaqueSuite>::start(&f.setup, req, USER);
            }
        }
        1 => {
            if let Ok(m) = RegistrationResponse::<OpaqueSuite>::deserialize(rest) {
                assert!(
                    rest.starts_with(&m.serialize()),
                    "re-serialization is not a prefix"
                );
            }
        }
        2 => {
            if let Ok(upload) = RegistrationUpload::<OpaqueSuite>::deserialize(rest) {
                assert!(
                    rest.starts_with(&upload.serialize()),
                    "re-serialization is not a prefix"
                );
                let file = ServerRegistration::<OpaqueSuite>::finish(upload);
                let bytes = file.serialize();
                ServerRegistration::<OpaqueSuite>::deserialize(&bytes).expect("file round trip");
            }
        }
        3 | 4 => {
            if let Ok(ke1) = CredentialRequest::<OpaqueSuite>::deserialize(rest) {
                assert!(
                    rest.starts_with(&ke1.serialize()),
                    "re-serialization is not a prefix"
                );
                let file = if mode % 8 == 3 {
                    Some(ServerRegistration::<OpaqueSuite>::deserialize(&f.file).expect("file"))
                } else {
                    None
                };
                let _ = ServerLogin::start(
                    &mut rng,
                    &f.setup,
                    file,
                    ke1,
                    USER,
                    ServerLoginParameters::default(),
                );
            }
        }
        5 => {
            if let Ok(m) = CredentialResponse::<OpaqueSuite>::deserialize(rest) {
                assert!(
                    rest.starts_with(&m.serialize()),
                    "re-serialization is not a prefix"
                );
            }
        }
        6 => {
            if let Ok(ke3) = CredentialFinalization::<OpaqueSuite>::deserialize(rest) {
                let genuine = ke3.serialize()[..] == f.ke3[..];
                let state = ServerLogin::<OpaqueSuite>::deserialize(&f.pending).expect("state");
                let r = state.finish(ke3, ServerLoginParameters::default());
                assert_eq!(r.is_ok(), genuine, "only the genuine KE3 may finish");
            }
        }
        _ => {
            if let Ok(file) = ServerRegistration::<OpaqueSuite>::deserialize(rest) {
                let ke1 = CredentialRequest::<OpaqueSuite>::deserialize(&f.ke1).expect("ke1");
                let _ = ServerLogin::start(
                    &mut rng,
                    &f.setup,
                    Some(file),
                    ke1,
                    USER,
                    ServerLoginParameters::default(),
                );
            }
        }
    }
});
