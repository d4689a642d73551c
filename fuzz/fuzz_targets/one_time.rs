//! A one-time sequences file (knockd's format): its unused lines are found
//! and each parses into steps or says why not, never a panic; marking a
//! line used keeps every other line as it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xknock::config::one_time;

fuzz_target!(|text: &str| {
    for (number, line) in one_time::unused_lines_in(text) {
        assert!(number >= 1 && number <= text.lines().count());
        let _ = one_time::parse_line(&line);
    }
});
