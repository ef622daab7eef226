//! P-1: the frame codec. Input: 4 bytes of caller limit (big-endian u32, so limits below,
//! at and far above MAX_PAYLOAD all occur), then the bytes of a would-be frame.
//! Runs Request/Response/Push::decode and the async readers over the same bytes.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use qpq_proto::frame::{
    read_push, read_request, read_response, FrameError, Push, ReadError, Request, Response,
};
use qpq_proto::MAX_PAYLOAD;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fn limit(max: usize) -> usize {
    max.min(MAX_PAYLOAD)
}

fn check_decode<T>(
    data: &[u8],
    max: usize,
    r: Result<(T, usize), FrameError>,
    payload_len: impl Fn(&T) -> usize,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    match r {
        Ok((frame, used)) => {
            assert!(used <= data.len());
            assert!(payload_len(&frame) <= limit(max));
            // The codec is canonical: re-encoding gives back exactly the consumed bytes.
            assert_eq!(encode(&frame), &data[..used]);
        }
        Err(FrameError::TooLarge { len, max: m }) => {
            assert!(len > m as u64);
            assert_eq!(m, limit(max));
        }
        Err(FrameError::Truncated { needed }) => assert!(needed > 0),
        Err(FrameError::UnknownStatus(_)) | Err(FrameError::Trailing(_)) => {}
    }
}

fn check_read<T: PartialEq + std::fmt::Debug>(
    read: Result<T, ReadError>,
    decoded: &Result<(T, usize), FrameError>,
    data_len: usize,
) {
    match (read, decoded) {
        (Ok(a), Ok((b, _))) => assert_eq!(&a, b),
        (Ok(a), Err(e)) => panic!("reader accepted {a:?}, decoder refused: {e:?}"),
        (Err(ReadError::TooLarge { len, max, .. }), _) => assert!(len as usize > max),
        (Err(ReadError::Closed), _) => assert_eq!(data_len, 0),
        (Err(ReadError::Truncated | ReadError::UnknownStatus(_)), Err(_)) => {}
        (Err(e), Ok(_)) => panic!("reader failed with {e:?} on a frame the decoder accepts"),
        (Err(e @ (ReadError::Deadline | ReadError::Io(_))), _) => {
            panic!("in-memory reader failed: {e:?}")
        }
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let max = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
    let data = &input[4..];

    let req = Request::decode(data, max);
    check_decode(
        data,
        max,
        req.clone(),
        |r| r.payload.len(),
        |r| r.encode().expect("decoded frame re-encodes"),
    );
    let resp = Response::decode(data, max);
    check_decode(
        data,
        max,
        resp.clone(),
        |r| r.payload.len(),
        |r| r.encode().expect("decoded frame re-encodes"),
    );
    let push = Push::decode(data, max);
    check_decode(
        data,
        max,
        push.clone(),
        |r| r.payload.len(),
        |r| r.encode().expect("decoded frame re-encodes"),
    );

    let d = Duration::from_secs(1);
    runtime().block_on(async {
        let mut s = data;
        check_read(read_request(&mut s, max, d).await, &req, data.len());
        let mut s = data;
        check_read(read_response(&mut s, max, d).await, &resp, data.len());
        let mut s = data;
        check_read(read_push(&mut s, max, d).await, &push, data.len());
    });
});
