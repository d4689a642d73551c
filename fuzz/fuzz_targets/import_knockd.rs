//! knockd.conf, as `xknock import-knockd` reads it: a conversion or an
//! error, never a panic; what it converts is a configuration xknock accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xknock::{config::Config, import::ImportError};

fuzz_target!(|text: &str| {
    match xknock::import::import_knockd(text) {
        Ok(imported) => {
            // Only a one-time file, read where xknock runs, may be missing.
            if let Err(error) = Config::parse(&imported.toml) {
                assert!(
                    error.to_string().contains("sequences_file"),
                    "import-knockd converted into an invalid configuration: {error}\n{}",
                    imported.toml
                );
            }
        }
        Err(ImportError::Syntax(..) | ImportError::NothingOpens | ImportError::Invalid(..)) => {}
    }
});
