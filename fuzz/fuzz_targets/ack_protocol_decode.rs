//! The acknowledged line protocol of `ember gen --ack` (`engine::source::ack`), whose control
//! lines come off a TCP connection: arbitrary bytes never panic either decoder, a decoded
//! message never claims more bytes than it was given, and what decodes re-encodes to a line
//! that decodes to the same message.
#![no_main]

use engine::source::ack::{decode_to_receiver, decode_to_sender};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((message, used))) = decode_to_sender(data) {
        assert!(used > 0 && used <= data.len());
        let mut again = Vec::new();
        message.encode(&mut again);
        let (decoded, used_again) = decode_to_sender(&again)
            .expect("an encoded message decodes")
            .expect("an encoded message is a whole line");
        assert_eq!(decoded, message);
        assert_eq!(used_again, again.len());
    }
    if let Ok(Some((message, used))) = decode_to_receiver(data) {
        assert!(used > 0 && used <= data.len());
        let mut again = Vec::new();
        message.encode(&mut again);
        let (decoded, used_again) = decode_to_receiver(&again)
            .expect("an encoded message decodes")
            .expect("an encoded message is a whole line");
        assert_eq!(decoded, message);
        assert_eq!(used_again, again.len());
    }
});
