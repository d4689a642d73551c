// Shared by the SPA targets (included, not a module of its own crate): an
// `[[spa]]` entry with the real fwknop client's keys of the seed corpus
// (knock-user's testdata), and its judge.

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime},
};

use knock_common::Addr;
use xknock::{
    config::Config,
    daemon::spa::{Judge, MemoryReplays},
    fwknop::Keys,
};

const KEY: &str = "ZS7QgadyXtQiQFfLiVxTEELO2/EOUpQR8tUmMFPF5Jk=";
const HMAC_KEY: &str =
    "IqWkUQOqEZh1eTERZUclZusSZUyY9Kg8utfKqA3H2mxnyQq5DfZwOIXfOJif8wsi97tuxnCS6k1GAryiquaKSg==";

pub struct Spa {
    pub judge: Judge,
    pub keys: Keys,
}

pub static SPA: LazyLock<Spa> = LazyLock::new(|| {
    let config = Config::parse(&format!(
        "deny = [\"203.0.113.9\"]\n[[spa]]\nname = \"fwknop\"\nkey_base64 = \"{KEY}\"\nhmac_key_base64 = \"{HMAC_KEY}\"\n\
         open_for = \"30s\"\nprotect = [\"tcp:22\", \"udp:51820\"]\nmax_age = \"120s\"\nsource = [\"198.18.0.0/16\", \"fd18::/64\"]\n"
    ))
    .expect("the fuzz configuration is valid");
    Spa {
        judge: Judge::new(&config, &config.slots_in_order()),
        keys: Keys::from_base64(KEY, HMAC_KEY).expect("keys"),
    }
});

/// Judges `payload` from `source` at the seed corpus' time (the real
/// client's packets were made on 2026-11-19) and, twice, as a replay.
pub fn judge(source: &Addr, payload: &[u8]) {
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_601_950);
    let mut cache = MemoryReplays::new(4);
    for _ in 0..2 {
        let _ = SPA.judge.judge(source, 62201, payload, when, &mut cache);
    }
}
