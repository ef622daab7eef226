//! P-6: every golden frame and golden message truncated at every byte offset, and extended
//! with 1..16 random bytes.
//!
//! Frames: every truncation is a typed `Truncated` error (from the decoder and from the async
//! reader; the reader says `Closed` for the empty stream); an extension is accepted with
//! exactly the frame consumed: the stream format has no end marker, so the extra bytes are the
//! start of the next frame, never part of this one.
//!
//! Messages: protobuf itself cannot tell a message cut at a field boundary from a shorter
//! message, so a truncation is either an error or decodes to exactly the complete fields
//! before the cut (its canonical encoding equals the prefix); an extension is an error or
//! decodes (unknown fields are skipped per the protobuf spec); nothing panics.
#![allow(clippy::unwrap_used)]

mod golden;

use std::time::Duration;

use prost::Message;
use qpq_proto::frame::{
    read_push, read_request, read_response, FrameError, Push, ReadError, Request, Response,
};
use qpq_proto::{v1, MAX_PAYLOAD};

/// A small deterministic generator (xorshift64*), enough for random trailing bytes.
struct Rng(u64);

impl Rng {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    }
}

fn decode(kind: &str, b: &[u8]) -> Result<usize, FrameError> {
    match kind {
        "request" => Request::decode(b, MAX_PAYLOAD).map(|r| r.1),
        "response" => Response::decode(b, MAX_PAYLOAD).map(|r| r.1),
        _ => Push::decode(b, MAX_PAYLOAD).map(|r| r.1),
    }
}

async fn read(kind: &str, mut b: &[u8]) -> Result<(), ReadError> {
    let d = Duration::from_secs(1);
    match kind {
        "request" => read_request(&mut b, MAX_PAYLOAD, d).await.map(drop),
        "response" => read_response(&mut b, MAX_PAYLOAD, d).await.map(drop),
        _ => read_push(&mut b, MAX_PAYLOAD, d).await.map(drop),
    }
}

#[tokio::test]
async fn frames_truncated_at_every_offset_and_extended() {
    let mut rng = Rng(6);
    let (mut cuts, mut extensions) = (0, 0);
    for (kind, frame) in golden::frames() {
        for cut in 0..frame.len() {
            let t = &frame[..cut];
            assert!(
                matches!(decode(kind, t), Err(FrameError::Truncated { .. })),
                "{kind} cut at {cut}"
            );
            let r = read(kind, t).await;
            if cut == 0 {
                assert!(matches!(r, Err(ReadError::Closed)));
            } else {
                assert!(
                    matches!(r, Err(ReadError::Truncated)),
                    "{kind} cut at {cut}: {r:?}"
                );
            }
            cuts += 1;
        }
        for extra in 1..=16 {
            for _ in 0..4 {
                let mut e = frame.clone();
                e.extend((0..extra).map(|_| rng.byte()));
                assert_eq!(decode(kind, &e), Ok(frame.len()));
                assert!(read(kind, &e).await.is_ok());
                extensions += 1;
            }
        }
    }
    assert!(
        cuts > 2000 && extensions == 13 * 16 * 4,
        "{cuts} {extensions}"
    );
}

fn sweep<M: Message + Default + PartialEq>(encoding: &[u8], rng: &mut Rng) -> (usize, usize) {
    let full = M::decode(encoding).unwrap();
    let (mut rejected, mut boundary) = (0, 0);
    for cut in 0..encoding.len() {
        match M::decode(&encoding[..cut]) {
            Err(_) => rejected += 1,
            Ok(m) => {
                assert!(m != full, "cut at {cut} decoded to the full message");
                assert_eq!(m.encode_to_vec(), &encoding[..cut], "cut at {cut}");
                boundary += 1;
            }
        }
    }
    for extra in 1..=16 {
        for _ in 0..4 {
            let mut e = encoding.to_vec();
            e.extend((0..extra).map(|_| rng.byte()));
            let _ = M::decode(&e[..]);
        }
    }
    (rejected, boundary)
}

#[test]
fn messages_truncated_at_every_offset_and_extended() {
    let mut rng = Rng(7);
    let mut total = (0, 0);
    for (name, enc) in golden::messages() {
        let r = match name {
            "EnqueueRequest" => sweep::<v1::EnqueueRequest>(&enc, &mut rng),
            "BatchEnqueueRequest" => sweep::<v1::BatchEnqueueRequest>(&enc, &mut rng),
            "FetchRequest" => sweep::<v1::FetchRequest>(&enc, &mut rng),
            "FetchResponse" => sweep::<v1::FetchResponse>(&enc, &mut rng),
            "AckRequest" => sweep::<v1::AckRequest>(&enc, &mut rng),
            "CreateChannelRequest" => sweep::<v1::CreateChannelRequest>(&enc, &mut rng),
            "OpaqueLoginStartRequest" => sweep::<v1::OpaqueLoginStartRequest>(&enc, &mut rng),
            "UploadBlobRequest" => sweep::<v1::UploadBlobRequest>(&enc, &mut rng),
            "UploadKeyPackageRequest" => sweep::<v1::UploadKeyPackageRequest>(&enc, &mut rng),
            "NewMessage" => sweep::<v1::NewMessage>(&enc, &mut rng),
            "HealthResponse" => sweep::<v1::HealthResponse>(&enc, &mut rng),
            "AppMessage" => sweep::<v1::AppMessage>(&enc, &mut rng),
            "Error" => sweep::<v1::Error>(&enc, &mut rng),
            other => panic!("no sweep for {other}"),
        };
        total = (total.0 + r.0, total.1 + r.1);
    }
    // Most cuts land inside a field; the rest are exact field boundaries.
    assert!(total.0 > 10 * total.1, "{total:?}");
}
