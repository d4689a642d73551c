//! A datagram to an SPA port, as the filter hands it to the loader: the
//! decoder (size and characters, HMAC, decryption, fields, digest) and the
//! judge (replay, age, request checks) never panic, whatever it holds.
//! Seeds: the real fwknop client's packets (fuzz/seeds/spa_datagram).
#![no_main]

use knock_common::ipv4_mapped;
use libfuzzer_sys::fuzz_target;

include!("spa.rs");

fuzz_target!(|payload: &[u8]| {
    let _ = xknock::fwknop::open(payload, &SPA.keys);
    judge(&ipv4_mapped([198, 18, 0, 2]), payload);
    // From outside the entry's `source`, the same.
    judge(&ipv4_mapped([203, 0, 113, 9]), payload);
});
