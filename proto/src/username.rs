//! The username rule, the one place client and server take it from.
//!
//! A username is 1 to [`MAX_LEN`] characters of `a-z`, `0-9`, `_`, `.` and `-`, compared
//! case-insensitively: [`normalize`] trims surrounding whitespace and lowercases ASCII before
//! checking, and what it returns is the form the server stores and every party compares.
//! It will not transliterate or accept other scripts: a rule that is plain ASCII has no
//! confusable look-alikes and no Unicode normalisation to disagree on.

/// Longest username, in characters (= bytes: only ASCII is allowed).
pub const MAX_LEN: usize = 32;

/// Why a username was refused. The messages name the rule, never the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Empty after trimming, or longer than [`MAX_LEN`].
    #[error("a username has 1 to 32 characters")]
    Length,
    /// A character outside `a-z 0-9 _ . -` (after lowercasing).
    #[error("a username may contain only a-z, 0-9, '_', '.' and '-'")]
    Character,
}

/// Normalises and checks a username: trims, lowercases ASCII, then requires 1 to [`MAX_LEN`]
/// of `a-z 0-9 _ . -`. Returns the normalised form.
pub fn normalize(username: &str) -> Result<String, UsernameError> {
    let u = username.trim().to_ascii_lowercase();
    if u.is_empty() {
        return Err(UsernameError::Length);
    }
    if !u.chars().all(allowed) {
        return Err(UsernameError::Character);
    }
    if u.len() > MAX_LEN {
        return Err(UsernameError::Length);
    }
    Ok(u)
}

fn allowed(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(normalize("alice").as_deref(), Ok("alice"));
        assert_eq!(normalize("  Alice.B_c-9 ").as_deref(), Ok("alice.b_c-9"));
        assert_eq!(normalize(&"a".repeat(32)).map(|s| s.len()), Ok(32));
    }

    #[test]
    fn refuses_by_rule() {
        assert_eq!(normalize(""), Err(UsernameError::Length));
        assert_eq!(normalize("   "), Err(UsernameError::Length));
        assert_eq!(normalize(&"a".repeat(33)), Err(UsernameError::Length));
        for bad in [
            "al ice",
            "alice!",
            "ålice",
            "alice\u{0}",
            "a/b",
            "名前",
            "alice@x",
        ] {
            assert_eq!(normalize(bad), Err(UsernameError::Character), "{bad:?}");
        }
        // 64 characters of an allowed kind: the old client limit, now refused everywhere.
        assert_eq!(normalize(&"b".repeat(64)), Err(UsernameError::Length));
        assert_eq!(normalize(&"é".repeat(40)), Err(UsernameError::Character));
    }
}
