//! The MLS ciphersuites qpq uses, the one list client, server and test kit take them from.
//!
//! Each is named by its IANA code point (what the wire's `ciphersuite` fields carry, as a
//! `u32`) and a stable text name for APIs and bindings (the IANA / draft name; it never
//! changes, unlike a library's `Debug` output). The crate does not depend on an MLS library:
//! `qpq-core` and `qpq-server` turn [`Suite::id`] into their openmls type.

/// One MLS ciphersuite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Suite {
    /// The IANA code point (`u16`), as the wire's `ciphersuite` fields carry it.
    pub id: u16,
    /// The stable name shown by APIs and bindings.
    pub name: &'static str,
}

/// The classic suite: X25519 DHKEM, AES-128-GCM, SHA-256, Ed25519 (0x0001).
pub const CLASSIC: Suite = Suite {
    id: 0x0001,
    name: "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
};

/// The post-quantum hybrid suite: X-Wing (ML-KEM-768 + X25519) KEM, AES-128-GCM, SHA-256,
/// Ed25519 (0x004F, draft-ietf-mls-pq-ciphersuites).
pub const XWING: Suite = Suite {
    id: 0x004F,
    name: "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519",
};

/// Every suite qpq uses: clients keep KeyPackages of each, the server accepts only these.
pub const ALL: [Suite; 2] = [CLASSIC, XWING];

/// The suite with this wire id, if qpq uses it.
pub fn by_id(id: u32) -> Option<Suite> {
    ALL.into_iter().find(|s| u32::from(s.id) == id)
}

/// The suite with this stable name, if qpq uses it.
pub fn by_name(name: &str) -> Option<Suite> {
    ALL.into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree() {
        for s in ALL {
            assert_eq!(by_id(u32::from(s.id)), Some(s));
            assert_eq!(by_name(s.name), Some(s));
        }
        assert_eq!(by_id(0x0003), None);
        assert_eq!(by_id(0x1_0001), None);
        assert_eq!(by_name("classic"), None);
    }
}
