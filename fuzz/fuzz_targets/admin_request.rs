//! The admin endpoint's request handling (hyper's HTTP/1.1 parser, then
//! the head checks and routes of `admin`), fed raw bytes as a client's
//! whole request: whatever comes, the answer is one HTTP/1.x response (in
//! the request's version) or
//! nothing, and no request without the bearer token reloads, drains or
//! swaps a policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{ADMIN_TOKEN, admin_request};

fuzz_target!(|data: &[u8]| {
    let got = admin_request(data);
    let answer = &got.answer;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
        "{:?}",
        String::from_utf8_lossy(answer)
    );
    if answer.len() >= 12 {
        assert!(answer[9..12].iter().all(u8::is_ascii_digit), "no status");
    }
    if got.changes > 0 {
        let token = ADMIN_TOKEN.as_bytes();
        assert!(
            data.windows(token.len()).any(|w| w == token),
            "a change without the token: {:?}",
            String::from_utf8_lossy(data)
        );
        assert!(answer.get(9..12) != Some(b"401"));
    }
});
