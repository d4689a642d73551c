//! Past the HMAC and the decryption: any plaintext an authentic client
//! could send (the target seals it with the entry's keys), with a source
//! and port, through the field parser, the digest check and the judge's
//! request checks, which never panic. Random datagrams almost never pass
//! the HMAC, so this is where the fields get fuzzed.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

include!("spa.rs");

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    source: [u8; 16],
    plaintext: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let payload = xknock::fwknop::forge(&SPA.keys, input.plaintext);
    let _ = xknock::fwknop::open(&payload, &SPA.keys);
    judge(&input.source, &payload);
});
