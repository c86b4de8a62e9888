//! The PROXY protocol header (`service_kit::proxy`): `read_header` reading
//! one v1/v2 header off the stream, byte-exact, then `decode`.
//!
//! Invariants: the header read is a prefix of the input and never longer
//! than the protocol allows; decode never panics.
#![no_main]
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use service_kit::proxy;

fuzz_target!(|data: &[u8]| {
    let _ = proxy::decode(data);
    // An in-memory stream never blocks: one poll finishes the read.
    let mut stream = data;
    let mut read = pin!(proxy::read_header(&mut stream));
    let Poll::Ready(result) = read.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("read_header pending on an in-memory stream");
    };
    if let Ok(header) = result {
        assert!(data.starts_with(&header), "header is not a prefix");
        assert!(header.len() <= 16 + 1024, "header too long");
        if header.starts_with(b"PROXY ") {
            assert!(header.len() <= 107 && header.ends_with(b"\r\n"));
        }
        let _ = proxy::decode(&header);
    }
});
