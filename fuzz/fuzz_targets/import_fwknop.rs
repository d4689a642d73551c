//! fwknopd's access.conf and fwknopd.conf, as `xknock import-fwknop` reads
//! them: a conversion or an error, never a panic; what it converts is a
//! configuration xknock accepts.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use xknock::config::Config;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    access_conf: &'a str,
    fwknopd_conf: Option<&'a str>,
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(imported) = xknock::import::import_fwknop(input.access_conf, input.fwknopd_conf) {
        if let Err(error) = Config::parse(&imported.toml) {
            panic!(
                "import-fwknop converted into an invalid configuration: {error}\n{}",
                imported.toml
            );
        }
    }
});
