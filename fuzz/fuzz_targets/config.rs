//! A configuration file: the parser and every check of the validator never
//! panic, and a configuration they accept flattens into what the kernel's
//! maps hold (or says why it cannot), without a panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xknock::config::{Config, KernelConfig};

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::parse(text) {
        let _ = KernelConfig::try_from(&config);
        let _ = xknock::fleet::fingerprint(&config);
    }
});
