//! The byte format of our Welcome wrapper, sealed inside the hybrid envelope: a version byte,
//! the conversation kind, its name and the MLS Welcome. Pure: no I/O, no state.
//!
//! Layout (v1): `[1][dm: 0|1][name length: u16 BE][name: UTF-8][MLS Welcome]`.

use crate::error::Error;
use crate::types::ConversationKind;

/// Version byte of our Welcome wrapper (inside the hybrid envelope).
const WELCOME_WRAPPER_V1: u8 = 1;

/// Wraps an encoded MLS Welcome with the conversation's kind and name (a name longer than
/// 65,535 bytes is cut there).
pub(super) fn wrap(kind: ConversationKind, name: &str, welcome: &[u8]) -> Vec<u8> {
    let mut wrapped = Vec::with_capacity(welcome.len() + name.len() + 4);
    wrapped.push(WELCOME_WRAPPER_V1);
    wrapped.push(u8::from(kind == ConversationKind::Dm));
    let name_bytes = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
    wrapped.extend_from_slice(&(name_bytes.len() as u16).to_be_bytes());
    wrapped.extend_from_slice(name_bytes);
    wrapped.extend_from_slice(welcome);
    wrapped
}

/// Splits a wrapper into kind, name (invalid UTF-8 replaced) and the MLS Welcome bytes.
pub(super) fn unwrap(wrapped: &[u8]) -> Result<(ConversationKind, String, &[u8]), Error> {
    if wrapped.len() < 4 || wrapped[0] != WELCOME_WRAPPER_V1 {
        return Err(Error::crypto("unknown Welcome wrapper"));
    }
    let kind = if wrapped[1] == 1 {
        ConversationKind::Dm
    } else {
        ConversationKind::Group
    };
    let name_len = u16::from_be_bytes([wrapped[2], wrapped[3]]) as usize;
    if wrapped.len() < 4 + name_len {
        return Err(Error::crypto("truncated Welcome wrapper"));
    }
    let name = String::from_utf8_lossy(&wrapped[4..4 + name_len]).into_owned();
    Ok((kind, name, &wrapped[4 + name_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let w = wrap(ConversationKind::Dm, "bob", b"mls");
        let (kind, name, rest) = unwrap(&w).expect("valid wrapper");
        assert_eq!(
            (kind, name.as_str(), rest),
            (ConversationKind::Dm, "bob", &b"mls"[..])
        );
        let (kind, _, _) = unwrap(&wrap(ConversationKind::Group, "", b"")).expect("valid");
        assert_eq!(kind, ConversationKind::Group);
        assert!(unwrap(&w[..5]).is_err(), "truncated name");
        assert!(unwrap(&[2, 0, 0, 0]).is_err(), "unknown version");
        assert!(unwrap(&[1, 0, 0]).is_err(), "too short");
    }
}
