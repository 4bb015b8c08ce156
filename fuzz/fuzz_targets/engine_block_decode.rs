//! The engine's block codecs, which decode blocks read back from a write-ahead log or a
//! peer: arbitrary bytes never panic the decoder, and what decodes re-encodes consistently.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use engine::{BlockCodec, LinesCodec, PostcardCodec};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Bytes of a `lines` block.
    Lines(&'a [u8]),
    /// Bytes of a `postcard` block of `(String, u64)` pairs (a word count's records).
    Postcard(&'a [u8]),
    /// Records to encode and decode back.
    Pairs(Vec<(String, u64)>),
}

fn postcard_decode(bytes: &[u8]) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    let n = PostcardCodec::<(String, u64)>::new()
        .decode(&Bytes::copy_from_slice(bytes), &mut |r| out.push(r))?;
    assert_eq!(n as usize, out.len());
    Ok(out)
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Lines(data) => {
            let mut lines = Vec::new();
            let decoded =
                LinesCodec.decode(&Bytes::copy_from_slice(data), &mut |s| lines.push(s));
            // The chunked decoder (what the engine's stages use) gives the same records.
            let mut chunked = Vec::new();
            let chunk = data.len() % 7 + 1;
            let decoded_in_chunks =
                LinesCodec.decode_chunks(&Bytes::copy_from_slice(data), chunk, &mut |c| {
                    assert!(!c.is_empty() && c.len() <= chunk);
                    chunked.append(c);
                });
            assert_eq!(decoded_in_chunks.is_ok(), decoded.is_ok());
            if decoded.is_ok() {
                assert_eq!(chunked, lines);
            }
            match decoded {
                Ok(n) => {
                    assert!(std::str::from_utf8(data).is_ok());
                    assert_eq!(n as usize, lines.len());
                    assert_eq!(n, LinesCodec::count_records(data));
                    // Without carriage returns the format is exact up to the final newline.
                    if !data.contains(&b'\r') {
                        let mut again = Vec::new();
                        LinesCodec.encode(&lines, &mut again).expect("decoded lines encode");
                        let mut canonical = data.to_vec();
                        if canonical.last().is_some_and(|&b| b != b'\n') {
                            canonical.push(b'\n');
                        }
                        assert_eq!(again, canonical);
                    }
                }
                Err(_) => assert!(std::str::from_utf8(data).is_err()),
            }
        }
        Input::Postcard(data) => {
            if let Ok(records) = postcard_decode(data) {
                let mut again = Vec::new();
                PostcardCodec::new().encode(&records, &mut again).expect("encodes");
                assert_eq!(postcard_decode(&again).expect("re-encoded decodes"), records);
            }
        }
        Input::Pairs(records) => {
            let mut bytes = Vec::new();
            PostcardCodec::new().encode(&records, &mut bytes).expect("encodes");
            assert_eq!(postcard_decode(&bytes).expect("decodes"), records);
        }
    }
});
