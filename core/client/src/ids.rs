//! Identifiers and public keys of the API as newtypes over fixed-size byte arrays.
//!
//! Each has one stable text form, lower-case hex of its bytes (`Display`), and parses back from
//! exactly that many hex digits in either case (`FromStr`, an `InvalidInput` error otherwise).
//! Bindings pass them as bytes or as that text; nothing else about them is promised (they are
//! not ordered by time, and a key's hex is not a fingerprint for humans: see
//! [`crate::Client::safety_number`]).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

macro_rules! byte_newtype {
    ($(#[$doc:meta])* $name:ident, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Its length in bytes.
            pub const LEN: usize = $len;

            /// Wraps the bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// From a slice of exactly [`Self::LEN`] bytes; `InvalidInput` otherwise.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
                <[u8; $len]>::try_from(bytes).map(Self).map_err(|_| {
                    Error::invalid(format!(
                        concat!(stringify!($name), " must be {} bytes, got {}"),
                        $len,
                        bytes.len()
                    ))
                })
            }

            /// The bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The bytes, by value.
            pub const fn to_bytes(self) -> [u8; $len] {
                self.0
            }

            /// The stable text form: lower-case hex (same as `Display`).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                parse_hex::<$len>(s).map(Self).ok_or_else(|| {
                    Error::invalid(format!(
                        concat!(stringify!($name), " must be {} hex digits"),
                        2 * $len
                    ))
                })
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }

        impl From<$name> for [u8; $len] {
            fn from(id: $name) -> [u8; $len] {
                id.0
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = Error;

            fn try_from(bytes: &[u8]) -> Result<Self, Error> {
                Self::from_slice(bytes)
            }
        }

        /// Read access to the bytes, so an id slices and compares like the array it wraps.
        impl std::ops::Deref for $name {
            type Target = [u8; $len];

            fn deref(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

byte_newtype!(
    /// A conversation id: equal to the server channel id and the MLS group id.
    ConversationId,
    16
);
byte_newtype!(
    /// A message id, chosen by the sender (random, or the app's own through
    /// [`crate::Client::send_with_id`]), unique per message.
    MessageId,
    16
);
byte_newtype!(
    /// A device's public key (its MLS signature key, Ed25519). Public, not a secret.
    DeviceKey,
    32
);
byte_newtype!(
    /// An account's public identity key, the same on every device of the account. Public.
    IdentityKey,
    32
);

/// `N` bytes from exactly `2 * N` hex digits (either case); surrounding whitespace is ignored.
pub(crate) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn text_form_round_trips_and_rejects_wrong_lengths() {
        let id = ConversationId::from_bytes([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(text.parse::<ConversationId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<ConversationId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), format!("ConversationId({text})"));
        for bad in ["", "ab", &"ab".repeat(17), &"zz".repeat(16)] {
            let err = bad.parse::<ConversationId>().unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidInput, "{bad:?}");
        }
        let key = DeviceKey::from_slice(&[7; 32]).unwrap();
        assert_eq!(key.to_hex().parse::<DeviceKey>().unwrap(), key);
        assert_eq!(
            IdentityKey::from_slice(&[7; 31]).unwrap_err().code(),
            ErrorCode::InvalidInput
        );
        let m: MessageId = [1; 16].into();
        let raw: [u8; 16] = m.into();
        assert_eq!(raw, [1; 16]);
    }
}
