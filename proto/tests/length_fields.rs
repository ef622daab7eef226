//! P-7 (decoders): declared payload lengths 0, 1, max−1, max, max+1, 2^31 and 2^32−1 in
//! request, response and push headers, for the protocol maximum (4 MiB) and a small caller
//! limit. Over-limit lengths are `TooLarge` whatever follows; in-limit lengths are decoded
//! when the bytes are there and `Truncated` when they are not. (2^64−1 cannot be declared:
//! the length field is a u32.) The reader side, with allocation measured, is in
//! `length_alloc.rs`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use qpq_proto::frame::{
    read_push, read_request, read_response, FrameError, Push, ReadError, Request, Response,
};
use qpq_proto::MAX_PAYLOAD;

fn header(kind: &str, len: u32) -> Vec<u8> {
    let mut h = match kind {
        "request" => vec![0, 200, 0, 0, 0, 9],
        "response" => vec![0, 0, 0, 0, 9],
        _ => vec![0x03, 0xe8],
    };
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn decode(kind: &str, b: &[u8], max: usize) -> Result<usize, FrameError> {
    match kind {
        "request" => Request::decode(b, max).map(|r| r.1),
        "response" => Response::decode(b, max).map(|r| r.1),
        _ => Push::decode(b, max).map(|r| r.1),
    }
}

fn lengths(max: usize) -> Vec<u64> {
    let m = max as u64;
    vec![0, 1, m - 1, m, m + 1, 1 << 31, u64::from(u32::MAX)]
}

#[test]
fn declared_lengths_against_the_limit() {
    for max in [MAX_PAYLOAD, 1024] {
        for kind in ["request", "response", "push"] {
            for len in lengths(max) {
                let len32 = u32::try_from(len).unwrap();
                let h = header(kind, len32);
                let over = len > max as u64;
                // Header only.
                match decode(kind, &h, max) {
                    Err(FrameError::TooLarge { len: l, max: m }) => {
                        assert!(over, "{kind} {len}");
                        assert_eq!((l, m), (len, max));
                    }
                    Err(FrameError::Truncated { needed }) => {
                        assert!(!over && len > 0, "{kind} {len}");
                        assert_eq!(needed as u64, len);
                    }
                    Ok(used) => assert_eq!((used, len), (h.len(), 0), "{kind}"),
                    Err(e) => panic!("{kind} {len}: {e:?}"),
                }
                // Header and the declared bytes (when allowed), plus one trailing byte.
                if !over {
                    let mut full = h.clone();
                    full.resize(h.len() + len as usize + 1, 0xab);
                    assert_eq!(decode(kind, &full, max), Ok(full.len() - 1), "{kind} {len}");
                }
            }
        }
    }
}

#[tokio::test]
async fn reader_refuses_over_limit_lengths_with_the_request_id() {
    let d = Duration::from_secs(1);
    for max in [MAX_PAYLOAD, 1024] {
        for len in lengths(max) {
            let len32 = u32::try_from(len).unwrap();
            let over = len > max as u64;
            let mut body = header("request", len32);
            if !over {
                body.resize(body.len() + len as usize, 1);
            }
            let mut s = &body[..];
            match read_request(&mut s, max, d).await {
                Err(ReadError::TooLarge {
                    request_id,
                    len: l,
                    max: m,
                }) => {
                    assert!(over);
                    assert_eq!((request_id, u64::from(l), m), (9, len, max));
                    assert!(s.is_empty(), "only the header was read");
                }
                Ok(r) => assert!(!over && r.payload.len() as u64 == len),
                Err(e) => panic!("{len}: {e:?}"),
            }
            let mut r = header("response", len32);
            if !over {
                r.resize(r.len() + len as usize, 1);
            }
            let mut s = &r[..];
            assert_eq!(
                matches!(
                    read_response(&mut s, max, d).await,
                    Err(ReadError::TooLarge { .. })
                ),
                over
            );
            let mut p = header("push", len32);
            if !over {
                p.resize(p.len() + len as usize, 1);
            }
            let mut s = &p[..];
            assert_eq!(
                matches!(
                    read_push(&mut s, max, d).await,
                    Err(ReadError::TooLarge { .. })
                ),
                over
            );
        }
    }
}
