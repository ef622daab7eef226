//! The byte formats of the Welcome payload an inviter enqueues. Pure: no I/O, no state.
//!
//! Classic groups (ADR 0111): the hybrid envelope seals the wrapper
//! `[1][dm: 0|1][name length: u16 BE][name: UTF-8][MLS Welcome]` to every new device, so
//! the Welcome's group secrets are safe from a quantum adversary even though the MLS suite's
//! HPKE is X25519 only.
//!
//! X-Wing groups: the MLS Welcome's HPKE is already X25519 + ML-KEM-768, so the Welcome goes
//! unsealed, and only the header (kind and name) is encrypted, with AES-128-GCM under a key
//! exported from the epoch the Welcome joins (which only the inviter and the joiners know):
//! `[0xA1][Welcome length: u32 BE][MLS Welcome][nonce: 12 B][AES-128-GCM(header) + 16 B tag]`,
//! header = `[dm: 0|1][name length: u16 BE][name]`, associated data = [`HEADER_AAD`] ||
//! channel id. The first byte tells the two apart (an envelope starts with its version, 1).

use crate::error::Error;
use crate::types::ConversationKind;

/// Version byte of our Welcome wrapper (inside the hybrid envelope).
const WELCOME_WRAPPER_V1: u8 = 1;
/// First byte of an MLS-protected (unsealed) Welcome payload of an X-Wing group.
pub(super) const MLS_PROTECTED_V1: u8 = 0xA1;
/// MLS exporter label of the header key (the context is the channel id).
pub(super) const HEADER_EXPORTER_LABEL: &str = "qpq welcome header v1";
/// Associated data prefix of the header AEAD (the channel id follows).
pub(super) const HEADER_AAD: &[u8] = b"qpq welcome header v1";
/// Length of the header AEAD's key (AES-128-GCM).
pub(super) const HEADER_KEY_LEN: usize = 16;
/// Length of the header AEAD's nonce, drawn at random per Welcome.
pub(super) const HEADER_NONCE_LEN: usize = 12;

/// The header: kind and name (a name longer than 65,535 bytes is cut there).
pub(super) fn header(kind: ConversationKind, name: &str) -> Vec<u8> {
    let name_bytes = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
    let mut h = Vec::with_capacity(name_bytes.len() + 3);
    h.push(u8::from(kind == ConversationKind::Dm));
    h.extend_from_slice(&(name_bytes.len() as u16).to_be_bytes());
    h.extend_from_slice(name_bytes);
    h
}

/// Splits a header off the front of `bytes`: kind, name (invalid UTF-8 replaced), the rest.
pub(super) fn parse_header(bytes: &[u8]) -> Result<(ConversationKind, String, &[u8]), Error> {
    if bytes.len() < 3 {
        return Err(Error::crypto("truncated Welcome header"));
    }
    let kind = if bytes[0] == 1 {
        ConversationKind::Dm
    } else {
        ConversationKind::Group
    };
    let name_len = u16::from_be_bytes([bytes[1], bytes[2]]) as usize;
    if bytes.len() < 3 + name_len {
        return Err(Error::crypto("truncated Welcome wrapper"));
    }
    let name = String::from_utf8_lossy(&bytes[3..3 + name_len]).into_owned();
    Ok((kind, name, &bytes[3 + name_len..]))
}

/// Wraps an encoded MLS Welcome with the conversation's kind and name (classic groups: the
/// result is sealed in the hybrid envelope).
pub(super) fn wrap(kind: ConversationKind, name: &str, welcome: &[u8]) -> Vec<u8> {
    let mut wrapped = Vec::with_capacity(welcome.len() + name.len() + 4);
    wrapped.push(WELCOME_WRAPPER_V1);
    wrapped.extend_from_slice(&header(kind, name));
    wrapped.extend_from_slice(welcome);
    wrapped
}

/// Splits a wrapper into kind, name (invalid UTF-8 replaced) and the MLS Welcome bytes.
pub(super) fn unwrap(wrapped: &[u8]) -> Result<(ConversationKind, String, &[u8]), Error> {
    if wrapped.len() < 4 || wrapped[0] != WELCOME_WRAPPER_V1 {
        return Err(Error::crypto("unknown Welcome wrapper"));
    }
    parse_header(&wrapped[1..])
}

/// The MLS-protected payload of an X-Wing group: the Welcome, the header's nonce and the
/// encrypted header (ciphertext and tag).
pub(super) fn mls_protected(
    welcome: &[u8],
    nonce: &[u8; HEADER_NONCE_LEN],
    sealed_header: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + welcome.len() + nonce.len() + sealed_header.len());
    out.push(MLS_PROTECTED_V1);
    out.extend_from_slice(&(welcome.len() as u32).to_be_bytes());
    out.extend_from_slice(welcome);
    out.extend_from_slice(nonce);
    out.extend_from_slice(sealed_header);
    out
}

/// The parts of an MLS-protected payload.
pub(super) struct MlsProtected<'a> {
    /// The encoded MLS Welcome.
    pub(super) welcome: &'a [u8],
    /// The header AEAD's nonce.
    pub(super) nonce: [u8; HEADER_NONCE_LEN],
    /// The encrypted header (ciphertext and tag).
    pub(super) sealed_header: &'a [u8],
}

/// Splits an MLS-protected payload into the Welcome, the nonce and the encrypted header.
pub(super) fn split_mls_protected(payload: &[u8]) -> Result<MlsProtected<'_>, Error> {
    if payload.len() < 5 || payload[0] != MLS_PROTECTED_V1 {
        return Err(Error::crypto("not an MLS-protected Welcome"));
    }
    let len = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]) as usize;
    let rest = &payload[5..];
    if rest.len() < len + HEADER_NONCE_LEN {
        return Err(Error::crypto("truncated MLS-protected Welcome"));
    }
    let (welcome, rest) = rest.split_at(len);
    let (nonce, sealed_header) = rest.split_at(HEADER_NONCE_LEN);
    let nonce: [u8; HEADER_NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| Error::crypto("truncated MLS-protected Welcome"))?;
    Ok(MlsProtected {
        welcome,
        nonce,
        sealed_header,
    })
}

/// The header AEAD's associated data for a channel.
pub(super) fn header_aad(conv: &[u8]) -> Vec<u8> {
    [HEADER_AAD, conv].concat()
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

    #[test]
    fn mls_protected_layout() {
        let p = mls_protected(b"welcome", &[7; 12], b"sealed header");
        assert_eq!(p[0], MLS_PROTECTED_V1);
        assert_ne!(p[0], qpq_crypto::envelope::ENVELOPE_VERSION);
        assert_eq!(p.len(), 1 + 4 + 7 + 12 + 13);
        let m = split_mls_protected(&p).expect("valid");
        assert_eq!(
            (m.welcome, m.nonce, m.sealed_header),
            (&b"welcome"[..], [7; 12], &b"sealed header"[..])
        );
        assert!(split_mls_protected(&p[..15]).is_err(), "truncated");
        assert!(split_mls_protected(&[MLS_PROTECTED_V1, 0, 0, 0]).is_err());
        let mut big = p.clone();
        big[1] = 0xff;
        assert!(split_mls_protected(&big).is_err(), "length past the end");
    }
}
