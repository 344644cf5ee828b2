//! The segment parser on arbitrary input: it never panics; what it accepts
//! prints back to text that parses to the same tree, and the JSON form of
//! that tree reads back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_engine::segment::{Expr, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(e) => {
            let printed = e.to_string();
            let again = parse(&printed)
                .unwrap_or_else(|err| panic!("printed form does not parse: {printed:?}: {err}"));
            assert_eq!(again, e, "print/parse round trip of {text:?} via {printed:?}");
            let json = serde_json::to_string(&e).expect("serialise");
            let back: Expr = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, e, "JSON round trip of {text:?}");
        }
        Err(err) => {
            // The error renders (line, column, caret) without panicking.
            let _ = err.to_string();
        }
    }
});
