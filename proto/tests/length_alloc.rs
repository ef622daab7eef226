//! P-7 (reader): a stream that declares a huge payload is refused before anything is read or
//! allocated for it. A counting global allocator records the peak of live heap bytes during
//! each attempt; the growth over the level before the attempt must stay below 1 MiB.
//!
//! One test only in this binary, so no other test thread allocates during a measurement.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use qpq_proto::frame::{read_push, read_request, read_response, ReadError};
use qpq_proto::MAX_PAYLOAD;
use tokio::io::{AsyncRead, ReadBuf};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A stream that starts with a header, then offers an endless run of 0xab bytes (or, with
/// `eof`, ends), counting what the reader takes.
struct Hostile {
    header: Vec<u8>,
    pos: usize,
    eof: bool,
    taken: usize,
}

impl AsyncRead for Hostile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let n = if this.pos < this.header.len() {
            let n = buf.remaining().min(this.header.len() - this.pos);
            buf.put_slice(&this.header[this.pos..this.pos + n]);
            this.pos += n;
            n
        } else if this.eof {
            0
        } else {
            let n = buf.remaining().min(64 * 1024);
            buf.put_slice(&vec![0xab; n]);
            n
        };
        this.taken += n;
        Poll::Ready(Ok(()))
    }
}

fn header(kind: &str, len: u32) -> Vec<u8> {
    let mut h = match kind {
        "request" => vec![0, 200, 0, 0, 0, 9],
        "response" => vec![0, 0, 0, 0, 9],
        _ => vec![0x03, 0xe8],
    };
    h.extend_from_slice(&len.to_be_bytes());
    h
}

async fn attempt(kind: &str, s: &mut Hostile, max: usize) -> Result<(), ReadError> {
    let d = Duration::from_secs(5);
    match kind {
        "request" => read_request(s, max, d).await.map(drop),
        "response" => read_response(s, max, d).await.map(drop),
        _ => read_push(s, max, d).await.map(drop),
    }
}

#[test]
fn huge_declared_lengths_are_refused_without_reading_or_allocating() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let over = [MAX_PAYLOAD as u32 + 1, 1 << 31, u32::MAX];
    let mut report = Vec::new();
    for kind in ["request", "response", "push"] {
        for (max, lens) in [(MAX_PAYLOAD, over.to_vec()), (1024, vec![1025, u32::MAX])] {
            for len in lens {
                let mut s = Hostile {
                    header: header(kind, len),
                    pos: 0,
                    eof: false,
                    taken: 0,
                };
                let before = LIVE.load(Ordering::SeqCst);
                PEAK.store(before, Ordering::SeqCst);
                let r = rt.block_on(attempt(kind, &mut s, max));
                let growth = PEAK.load(Ordering::SeqCst) - before;
                assert!(
                    matches!(r, Err(ReadError::TooLarge { .. })),
                    "{kind} {len}: {r:?}"
                );
                assert_eq!(
                    s.taken,
                    s.header.len(),
                    "{kind} {len}: read past the header"
                );
                assert!(growth < 1 << 20, "{kind} {len}: {growth} bytes allocated");
                report.push(growth);
            }
        }
        // Declares exactly the maximum and then ends: refused as truncated, and the buffer
        // grows with what arrives, not with what was declared.
        let mut s = Hostile {
            header: header(kind, MAX_PAYLOAD as u32),
            pos: 0,
            eof: true,
            taken: 0,
        };
        let before = LIVE.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let r = rt.block_on(attempt(kind, &mut s, MAX_PAYLOAD));
        let growth = PEAK.load(Ordering::SeqCst) - before;
        assert!(matches!(r, Err(ReadError::Truncated)), "{kind}: {r:?}");
        assert!(
            growth < 1 << 20,
            "{kind} max then EOF: {growth} bytes allocated"
        );
        report.push(growth);
    }
    // Peak growth per attempt, for the record (run with --nocapture).
    eprintln!("peak heap growth per attempt (bytes): {report:?}");
}
