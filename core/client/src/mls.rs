//! MLS glue: the openmls provider over the encrypted store, ciphersuites, credentials,
//! KeyPackages and group configs. Decisions about when to commit live in `session::commit`.

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use qpq_crypto::identity::IdentityKey;

use crate::error::MlsError;
use crate::store::{MlsStorage, Store};

/// Classic suite (id 1).
pub(crate) const CLASSIC: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Post-quantum suite (X-Wing: ML-KEM-768 + X25519).
pub(crate) const PQ: Ciphersuite = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;
/// Both suites we keep KeyPackages for.
pub(crate) const SUITES: [Ciphersuite; 2] = [CLASSIC, PQ];

/// How many past epochs' secrets are kept, so messages sent just before a commit still
/// decrypt after it was merged.
const MAX_PAST_EPOCHS: usize = 5;

/// How far behind the newest message of a sender a message may arrive and still decrypt
/// (openmls keeps the skipped keys). openmls's default is 5; a redelivered or reordered
/// batch (RELIABILITY D-6: shuffled within windows of 10) needs more.
const OUT_OF_ORDER_TOLERANCE: u32 = 32;
/// How far ahead of the last seen message a sender may jump (openmls's default).
const MAX_FORWARD_DISTANCE: u32 = 1000;

fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAX_FORWARD_DISTANCE)
}

/// The openmls provider: RustCrypto for crypto and randomness, the encrypted store for state.
pub(crate) struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: MlsStorage<'a>,
    store: &'a Store,
}

impl<'a> Provider<'a> {
    pub(crate) fn new(crypto: &'a RustCrypto, store: &'a Store) -> Provider<'a> {
        Provider {
            crypto,
            storage: store.mls(),
            store,
        }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MlsStorage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// Name of a ciphersuite as shown in [`crate::Conversation::ciphersuite`].
///
/// Stable: spelled out here (the RFC 9420 / IANA registry names), not openmls's `Debug`, so an
/// openmls upgrade cannot rename them. An unknown suite shows as its code, `0x....`.
pub(crate) fn suite_name(cs: Ciphersuite) -> String {
    if cs == CLASSIC {
        "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519".into()
    } else if cs == PQ {
        "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519".into()
    } else {
        format!("0x{:04x}", u16::from(cs))
    }
}

/// The device's MLS signer (its Ed25519 device key).
pub(crate) fn signer(device: &IdentityKey) -> SignatureKeyPair {
    SignatureKeyPair::from_raw(
        SignatureScheme::ED25519,
        device.to_bytes().to_vec(),
        device.public_key().to_vec(),
    )
}

/// BasicCredential with identity = device public key.
pub(crate) fn credential(device: &IdentityKey) -> CredentialWithKey {
    let public = device.public_key();
    CredentialWithKey {
        credential: BasicCredential::new(public.to_vec()).into(),
        signature_key: public.to_vec().into(),
    }
}

/// Device key named by a member credential (BasicCredential identity).
pub(crate) fn device_of(credential: &Credential) -> Option<[u8; 32]> {
    BasicCredential::try_from(credential.clone())
        .ok()
        .and_then(|b| b.identity().try_into().ok())
}

/// Capabilities every leaf of ours advertises: both suites.
/// What our leaves support: both suites and the roles extension (ADR 0032), which a group
/// context may carry only when every member supports it.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&SUITES),
        Some(&[
            ExtensionType::Unknown(crate::roles::ROLES_EXTENSION),
            ExtensionType::LastResort,
        ]),
        None,
        None,
    )
}

/// Makes `n` KeyPackages of `cs` (private parts go to the store) and returns their encodings.
pub(crate) fn key_packages(
    provider: &Provider<'_>,
    device: &IdentityKey,
    cs: Ciphersuite,
    n: usize,
) -> Result<Vec<Vec<u8>>, MlsError> {
    let signer = signer(device);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(cs, provider, &signer, credential(device))
            .map_err(|e| MlsError::Openmls(format!("key package: {e}")))?;
        let bytes = bundle
            .key_package()
            .tls_serialize_detached()
            .map_err(|e| MlsError::Openmls(e.to_string()))?;
        out.push(bytes);
    }
    Ok(out)
}

/// Makes one RFC 9420 last-resort KeyPackage of `cs` (issue 17 item 13): the server serves it
/// only when this device's stock is empty and never deletes it, so the device stays
/// invitable while its ordinary KeyPackages are drained; openmls keeps its private part after
/// a join. Returns its encoding.
pub(crate) fn last_resort_key_package(
    provider: &Provider<'_>,
    device: &IdentityKey,
    cs: Ciphersuite,
) -> Result<Vec<u8>, MlsError> {
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .mark_as_last_resort()
        .build(cs, provider, &signer(device), credential(device))
        .map_err(|e| MlsError::Openmls(format!("key package: {e}")))?;
    bundle
        .key_package()
        .tls_serialize_detached()
        .map_err(|e| MlsError::Openmls(e.to_string()))
}

/// Parses and validates a KeyPackage from the server.
pub(crate) fn parse_key_package(
    provider: &Provider<'_>,
    bytes: &[u8],
) -> Result<KeyPackage, MlsError> {
    use openmls::prelude::tls_codec::Deserialize as _;
    let kp = KeyPackageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsError::Openmls(format!("key package: {e}")))?;
    kp.validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| MlsError::Openmls(format!("key package: {e}")))
}

/// Config for groups we create.
pub(crate) fn create_config(
    cs: Ciphersuite,
    group_extensions: Option<Extensions<GroupContext>>,
) -> Result<MlsGroupCreateConfig, MlsError> {
    let mut b = MlsGroupCreateConfig::builder()
        .ciphersuite(cs)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .capabilities(capabilities());
    if let Some(e) = group_extensions {
        b = b.with_group_context_extensions(e);
    }
    Ok(b.build())
}

/// Config for groups we join by Welcome.
pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .build()
}

/// Serialises an outgoing MLS message.
pub(crate) fn encode(m: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    m.tls_serialize_detached()
        .map_err(|e| MlsError::Openmls(e.to_string()))
}

/// A group checked out of the store's in-memory cache (or loaded from the store when not
/// cached). Dropped, it is forgotten; [`Loaded::keep`] puts it back for the next operation,
/// which the caller does only once its work with the group succeeded (see
/// [`crate::store::GroupCache`] for when the cache refuses it anyway).
pub(crate) struct Loaded<'a> {
    store: &'a Store,
    id: [u8; 16],
    generation: u64,
    group: Option<MlsGroup>,
    keep: bool,
}

impl Loaded<'_> {
    /// Marks the group as matching the store: it goes back into the cache when dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl std::ops::Deref for Loaded<'_> {
    type Target = MlsGroup;
    fn deref(&self) -> &MlsGroup {
        self.group
            .as_ref()
            .expect("a Loaded holds its group until dropped")
    }
}

impl std::ops::DerefMut for Loaded<'_> {
    fn deref_mut(&mut self) -> &mut MlsGroup {
        self.group
            .as_mut()
            .expect("a Loaded holds its group until dropped")
    }
}

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        let group = if self.keep { self.group.take() } else { None };
        if let Ok(mut c) = self.store.groups.try_borrow_mut() {
            c.put_back(&self.id, self.generation, group);
        }
    }
}

/// Loads a group by conversation id: from the in-memory cache when it is there, else from
/// the store.
pub(crate) fn load<'a>(
    provider: &Provider<'a>,
    id: &[u8; 16],
) -> Result<Option<Loaded<'a>>, MlsError> {
    let store = provider.store;
    let (cached, generation) = store
        .groups
        .try_borrow_mut()
        .map_err(|_| MlsError::Openmls("group cache busy".into()))?
        .check_out(id);
    // From here on the copy is checked out: every path returns it (Loaded's Drop).
    let mut loaded = Loaded {
        store,
        id: *id,
        generation,
        group: None,
        keep: false,
    };
    let group = match cached {
        Some(g) => g,
        None => {
            store.count_group_load();
            match MlsGroup::load(provider.storage(), &GroupId::from_slice(id))
                .map_err(|e| MlsError::Openmls(format!("load group: {e}")))?
            {
                Some(g) => g,
                None => return Ok(None),
            }
        }
    };
    loaded.group = Some(group);
    Ok(Some(loaded))
}

/// Device keys of all members (leaf order).
pub(crate) fn member_devices(group: &MlsGroup) -> Vec<(LeafNodeIndex, [u8; 32])> {
    group
        .members()
        .filter_map(|m| device_of(&m.credential).map(|d| (m.index, d)))
        .collect()
}

#[cfg(test)]
mod suite_name_tests {
    use super::*;

    #[test]
    fn suite_names_are_pinned() {
        assert_eq!(
            suite_name(CLASSIC),
            "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"
        );
        assert_eq!(
            suite_name(PQ),
            "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519"
        );
    }
}

#[cfg(test)]
mod cache_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::error::StoreError;
    use crate::types::StoreKey;

    const ID: [u8; 16] = [7; 16];

    fn setup() -> (tempfile::TempDir, Store, IdentityKey) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreKey::Raw([9; 32]), true).unwrap();
        let device = IdentityKey::generate(&mut rand::rngs::OsRng);
        let crypto = RustCrypto::default();
        let p = Provider::new(&crypto, &store);
        MlsGroup::new_with_group_id(
            &p,
            &signer(&device),
            &create_config(CLASSIC, None).unwrap(),
            GroupId::from_slice(&ID),
            credential(&device),
        )
        .unwrap();
        (dir, store, device)
    }

    /// A group kept after a successful operation is not loaded again; a group changed by an
    /// operation whose transaction rolled back (a failed commit, a failed message) is
    /// forgotten, so the next operation reads the store, not a group ahead of it.
    #[test]
    fn a_rolled_back_operation_leaves_no_stale_group_in_memory() {
        let (_dir, store, device) = setup();
        let crypto = RustCrypto::default();
        let p = Provider::new(&crypto, &store);
        load(&p, &ID).unwrap().unwrap().keep();
        assert_eq!(store.group_loads(), 1);
        load(&p, &ID).unwrap().unwrap().keep();
        assert_eq!(store.group_loads(), 1, "the kept group is reused");
        assert_eq!(store.groups.borrow().len(), 1);

        let before = store.state_hash().unwrap();
        let r = store.transaction(|_| -> Result<(), crate::error::Error> {
            let mut g = load(&p, &ID)?.unwrap();
            g.create_message(&p, &signer(&device), b"never sent")
                .map_err(|e| MlsError::Openmls(e.to_string()))?;
            g.keep();
            drop(g);
            Err(StoreError::Corrupt("simulated failure after the group changed".into()).into())
        });
        assert!(r.is_err());
        assert_eq!(store.state_hash().unwrap(), before, "the store rolled back");
        assert_eq!(
            store.groups.borrow().len(),
            0,
            "the changed group is forgotten"
        );
        load(&p, &ID).unwrap().unwrap().keep();
        assert_eq!(store.group_loads(), 2, "the next operation reads the store");

        // A copy checked out across another transaction's rollback is not put back.
        let mut g = load(&p, &ID).unwrap().unwrap();
        let r = store.transaction(|_| -> Result<(), StoreError> {
            Err(StoreError::Corrupt("another failure".into()))
        });
        assert!(r.is_err());
        g.keep();
        drop(g);
        assert_eq!(store.groups.borrow().len(), 0);

        // Two copies at once (one may change the store behind the other): neither is kept.
        let mut outer = load(&p, &ID).unwrap().unwrap();
        let mut inner = load(&p, &ID).unwrap().unwrap();
        inner.keep();
        drop(inner);
        outer.keep();
        drop(outer);
        assert_eq!(store.groups.borrow().len(), 0);
        load(&p, &ID).unwrap().unwrap().keep();
        assert_eq!(store.groups.borrow().len(), 1, "cached again once alone");
    }
}
