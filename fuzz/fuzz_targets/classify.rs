//! The built-in statement classification (`sql::classify`, its tokenizer
//! and statement cut): any bytes as a COM_QUERY's text. Several
//! statements are always the writer's, and a trailing blank and `;` change
//! nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::sql::{Kind, classify};

fuzz_target!(|data: &[u8]| {
    let class = classify(data);
    if class.multi {
        assert_eq!(class.kind, Kind::Write);
    }
    let mut ended = data.to_vec();
    ended.extend_from_slice(b" ;");
    assert_eq!(
        classify(&ended),
        class,
        "{:?}",
        String::from_utf8_lossy(data)
    );
});
