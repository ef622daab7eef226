//! Frame codec: request, response and push frames, and an async reader with a size limit
//! and a deadline.
//!
//! Decoding never allocates more than the declared payload length, and checks that length
//! against the caller's limit before allocating anything.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Status, MAX_PAYLOAD};

/// Size of a request header: method u16, request id u32, payload length u32.
pub const REQUEST_HEADER_LEN: usize = 10;
/// Size of a response header: status u8, request id u32, payload length u32.
pub const RESPONSE_HEADER_LEN: usize = 9;
/// Size of a push header: event type u16, payload length u32.
pub const PUSH_HEADER_LEN: usize = 6;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer ends before the frame does.
    #[error("frame truncated: {needed} more bytes needed")]
    Truncated {
        /// Bytes missing to complete the frame.
        needed: usize,
    },
    /// The declared payload length is over the limit.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: u64,
        /// Limit in force.
        max: usize,
    },
    /// A response carried a status byte this version does not know.
    #[error("unknown status code {0}")]
    UnknownStatus(u8),
    /// Bytes follow a complete frame where none may.
    #[error("{0} unexpected bytes after the frame")]
    Trailing(usize),
}

/// A client-to-server call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method id ([`crate::method`]).
    pub method: u16,
    /// Chosen by the client, echoed in the response.
    pub request_id: u32,
    /// Protobuf body.
    pub payload: Bytes,
}

/// A server-to-client answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Outcome.
    pub status: Status,
    /// The request's id.
    pub request_id: u32,
    /// Protobuf body: the method's response, or [`crate::v1::Error`] when not Ok.
    pub payload: Bytes,
}

/// A server-to-client event on a unidirectional stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Event id ([`crate::event`]).
    pub event: u16,
    /// Protobuf body.
    pub payload: Bytes,
}

fn check_len(len: usize, max: usize) -> Result<u32, FrameError> {
    if len > max || len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: max.min(MAX_PAYLOAD),
        });
    }
    // MAX_PAYLOAD fits in u32, so this cannot fail after the check above.
    u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        max,
    })
}

fn split_payload(
    buf: &[u8],
    header: usize,
    len: u32,
    max: usize,
) -> Result<(Bytes, usize), FrameError> {
    let len = len as usize;
    if len > max.min(MAX_PAYLOAD) {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: max.min(MAX_PAYLOAD),
        });
    }
    let end = header + len;
    if buf.len() < end {
        return Err(FrameError::Truncated {
            needed: end - buf.len(),
        });
    }
    Ok((Bytes::copy_from_slice(&buf[header..end]), end))
}

fn need(buf: &[u8], header: usize) -> Result<(), FrameError> {
    if buf.len() < header {
        Err(FrameError::Truncated {
            needed: header - buf.len(),
        })
    } else {
        Ok(())
    }
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Request {
    /// Encodes the frame; fails when the payload is over [`MAX_PAYLOAD`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let len = check_len(self.payload.len(), MAX_PAYLOAD)?;
        let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.method.to_be_bytes());
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes one frame from the start of `buf`, returning it and the bytes consumed.
    pub fn decode(buf: &[u8], max: usize) -> Result<(Request, usize), FrameError> {
        need(buf, REQUEST_HEADER_LEN)?;
        let (payload, used) = split_payload(buf, REQUEST_HEADER_LEN, be_u32(&buf[6..10]), max)?;
        Ok((
            Request {
                method: be_u16(&buf[0..2]),
                request_id: be_u32(&buf[2..6]),
                payload,
            },
            used,
        ))
    }
}

impl Response {
    /// Encodes the frame; fails when the payload is over [`MAX_PAYLOAD`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let len = check_len(self.payload.len(), MAX_PAYLOAD)?;
        let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN + self.payload.len());
        out.push(self.status.code());
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes one frame from the start of `buf`, returning it and the bytes consumed.
    pub fn decode(buf: &[u8], max: usize) -> Result<(Response, usize), FrameError> {
        need(buf, RESPONSE_HEADER_LEN)?;
        let status = Status::from_code(buf[0]).ok_or(FrameError::UnknownStatus(buf[0]))?;
        let (payload, used) = split_payload(buf, RESPONSE_HEADER_LEN, be_u32(&buf[5..9]), max)?;
        Ok((
            Response {
                status,
                request_id: be_u32(&buf[1..5]),
                payload,
            },
            used,
        ))
    }
}

impl Push {
    /// Encodes the frame; fails when the payload is over [`MAX_PAYLOAD`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let len = check_len(self.payload.len(), MAX_PAYLOAD)?;
        let mut out = Vec::with_capacity(PUSH_HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.event.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes one frame from the start of `buf`, returning it and the bytes consumed.
    pub fn decode(buf: &[u8], max: usize) -> Result<(Push, usize), FrameError> {
        need(buf, PUSH_HEADER_LEN)?;
        let (payload, used) = split_payload(buf, PUSH_HEADER_LEN, be_u32(&buf[2..6]), max)?;
        Ok((
            Push {
                event: be_u16(&buf[0..2]),
                payload,
            },
            used,
        ))
    }
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream ended cleanly before the first byte of a frame.
    #[error("stream closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The header declares a payload over the limit; nothing of it was read or allocated.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The request id from the header (0 for push frames), so the reader can answer.
        request_id: u32,
        /// Declared length.
        len: u32,
        /// Limit in force.
        max: usize,
    },
    /// A response header carried an unknown status byte.
    #[error("unknown status code {0}")]
    UnknownStatus(u8),
    /// The deadline passed before the frame was complete.
    #[error("deadline exceeded while reading a frame")]
    Deadline,
    /// The transport failed.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` when the stream ended before the first byte.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<bool, ReadError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(ReadError::Truncated)
            };
        }
        got += n;
    }
    Ok(true)
}

async fn read_frame<R: AsyncRead + Unpin, const H: usize>(
    r: &mut R,
    max: usize,
    len_at: usize,
    id_at: Option<usize>,
) -> Result<([u8; H], Bytes), ReadError> {
    let mut header = [0u8; H];
    if !fill(r, &mut header).await? {
        return Err(ReadError::Closed);
    }
    let len = be_u32(&header[len_at..len_at + 4]);
    let max = max.min(MAX_PAYLOAD);
    if len as usize > max {
        return Err(ReadError::TooLarge {
            request_id: id_at.map_or(0, |i| be_u32(&header[i..i + 4])),
            len,
            max,
        });
    }
    // Grow the buffer as bytes arrive: a peer that declares 4 MiB and sends nothing pins
    // no memory.
    let mut payload = Vec::with_capacity((len as usize).min(64 * 1024));
    let got = (&mut *r)
        .take(u64::from(len))
        .read_to_end(&mut payload)
        .await?;
    if got != len as usize {
        return Err(ReadError::Truncated);
    }
    Ok((header, Bytes::from(payload)))
}

async fn with_deadline<T>(
    deadline: Duration,
    fut: impl std::future::Future<Output = Result<T, ReadError>>,
) -> Result<T, ReadError> {
    tokio::time::timeout(deadline, fut)
        .await
        .map_err(|_| ReadError::Deadline)?
}

/// Reads one request frame, refusing payloads over `max` bytes before allocating them and
/// giving up after `deadline` (a peer that sends half a frame is cut off, not waited on).
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    deadline: Duration,
) -> Result<Request, ReadError> {
    with_deadline(deadline, async {
        let (h, payload) = read_frame::<R, REQUEST_HEADER_LEN>(r, max, 6, Some(2)).await?;
        Ok(Request {
            method: be_u16(&h[0..2]),
            request_id: be_u32(&h[2..6]),
            payload,
        })
    })
    .await
}

/// Reads one response frame, with the same limits as [`read_request`].
pub async fn read_response<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    deadline: Duration,
) -> Result<Response, ReadError> {
    with_deadline(deadline, async {
        let (h, payload) = read_frame::<R, RESPONSE_HEADER_LEN>(r, max, 5, Some(1)).await?;
        let status = Status::from_code(h[0]).ok_or(ReadError::UnknownStatus(h[0]))?;
        Ok(Response {
            status,
            request_id: be_u32(&h[1..5]),
            payload,
        })
    })
    .await
}

/// Reads one push frame, with the same limits as [`read_request`].
pub async fn read_push<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    deadline: Duration,
) -> Result<Push, ReadError> {
    with_deadline(deadline, async {
        let (h, payload) = read_frame::<R, PUSH_HEADER_LEN>(r, max, 2, None).await?;
        Ok(Push {
            event: be_u16(&h[0..2]),
            payload,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(method: u16, id: u32, p: &[u8]) -> Request {
        Request {
            method,
            request_id: id,
            payload: Bytes::copy_from_slice(p),
        }
    }

    #[test]
    fn request_layout_is_big_endian() {
        let b = req(0x0102, 0x03040506, b"xy").encode().expect("small");
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 0, 0, 0, 2, b'x', b'y']);
        let r = Response {
            status: Status::Conflict,
            request_id: 7,
            payload: Bytes::new(),
        };
        assert_eq!(r.encode().expect("small"), [6, 0, 0, 0, 7, 0, 0, 0, 0]);
        let p = Push {
            event: 1000,
            payload: Bytes::from_static(b"z"),
        };
        assert_eq!(p.encode().expect("small"), [0x03, 0xe8, 0, 0, 0, 1, b'z']);
    }

    #[test]
    fn over_limit_lengths_are_rejected_before_allocation() {
        for len in [MAX_PAYLOAD as u32 + 1, u32::MAX, 1 << 31] {
            let mut b = vec![0, 200, 0, 0, 0, 1];
            b.extend_from_slice(&len.to_be_bytes());
            assert!(matches!(
                Request::decode(&b, MAX_PAYLOAD),
                Err(FrameError::TooLarge { .. })
            ));
        }
        // A caller limit below MAX_PAYLOAD is honoured too.
        let b = req(1, 1, &[0u8; 100]).encode().expect("small");
        assert!(matches!(
            Request::decode(&b, 99),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(Request::decode(&b, 100).is_ok());
        let big = req(1, 1, &vec![0u8; MAX_PAYLOAD + 1]);
        assert!(matches!(big.encode(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn unknown_status_is_an_error() {
        let b = [12u8, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(Response::decode(&b, 10), Err(FrameError::UnknownStatus(12)));
    }

    #[tokio::test]
    async fn reader_reads_frames_and_reports_truncation_and_limits() {
        let frame = req(200, 9, b"hello").encode().expect("small");
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut s = &two[..];
        let d = Duration::from_secs(1);
        assert_eq!(
            read_request(&mut s, 100, d).await.expect("first").payload,
            &b"hello"[..]
        );
        assert_eq!(
            read_request(&mut s, 100, d)
                .await
                .expect("second")
                .request_id,
            9
        );
        assert!(matches!(
            read_request(&mut s, 100, d).await,
            Err(ReadError::Closed)
        ));

        for cut in 1..frame.len() {
            let mut s = &frame[..cut];
            assert!(
                matches!(
                    read_request(&mut s, 100, d).await,
                    Err(ReadError::Truncated)
                ),
                "cut {cut}"
            );
        }
        let mut s = &frame[..];
        match read_request(&mut s, 4, d).await {
            Err(ReadError::TooLarge {
                request_id,
                len,
                max,
            }) => {
                assert_eq!((request_id, len, max), (9, 5, 4));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reader_gives_up_at_the_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        client.write_all(&[0, 200, 0, 0]).await.expect("write");
        let r = read_request(&mut server, 100, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ReadError::Deadline)));
    }

    proptest! {
        #[test]
        fn request_round_trips(method: u16, id: u32, p in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let r = req(method, id, &p);
            let b = r.encode().expect("small");
            let (d, used) = Request::decode(&b, MAX_PAYLOAD).expect("decodes");
            prop_assert_eq!(used, b.len());
            prop_assert_eq!(d, r);
        }

        #[test]
        fn response_round_trips(code in 0u8..12, id: u32, p in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let r = Response { status: Status::from_code(code).expect("valid"), request_id: id, payload: Bytes::from(p) };
            let b = r.encode().expect("small");
            prop_assert_eq!(Response::decode(&b, MAX_PAYLOAD).expect("decodes"), (r, b.len()));
        }

        #[test]
        fn push_round_trips(event: u16, p in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let r = Push { event, payload: Bytes::from(p) };
            let b = r.encode().expect("small");
            prop_assert_eq!(Push::decode(&b, MAX_PAYLOAD).expect("decodes"), (r, b.len()));
        }

        #[test]
        fn every_truncation_point_is_reported(method: u16, id: u32, p in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b = req(method, id, &p).encode().expect("small");
            for cut in 0..b.len() {
                match Request::decode(&b[..cut], MAX_PAYLOAD) {
                    Err(FrameError::Truncated { needed }) => prop_assert_eq!(needed, if cut < REQUEST_HEADER_LEN { REQUEST_HEADER_LEN - cut } else { b.len() - cut }),
                    other => prop_assert!(false, "cut {} gave {:?}", cut, other),
                }
            }
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256), max in 0usize..512) {
            if let Ok((r, used)) = Request::decode(&b, max) {
                prop_assert!(used <= b.len());
                prop_assert!(r.payload.len() <= max);
            }
            let _ = Response::decode(&b, max);
            let _ = Push::decode(&b, max);
        }

        #[test]
        fn protobuf_garbage_is_an_error_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            use prost::Message as _;
            let _ = crate::v1::EnqueueRequest::decode(&b[..]);
            let _ = crate::v1::OpaqueLoginFinishRequest::decode(&b[..]);
            let _ = crate::v1::UploadBlobRequest::decode(&b[..]);
        }
    }
}
