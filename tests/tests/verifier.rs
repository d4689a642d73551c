//! The verifier's headroom: how much of its one-million-instruction budget
//! each of the filter's programs takes to be accepted. A kernel update once
//! made the knock program's rule loop cost the whole budget (its state
//! differed at every iteration), and then nothing loaded at all; this says
//! so with numbers, before any other test fails for want of a filter.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::use_debug,
    reason = "tests and the lab show what they do on the test's output"
)]

use lab::{article_config, require_root};
use xknock::{
    config::{Config, KernelConfig},
    loader::Filter,
};

/// The verifier's own limit on instructions processed per program.
const VERIFIER_LIMIT: u32 = 1_000_000;

/// Fails unless every program of `filter` was accepted with at least half
/// the verifier's budget to spare.
fn assert_headroom(what: &str, filter: &Filter) {
    let work = filter.verifier_work().expect("program info");
    eprintln!("{what}: {work:?}");
    for program in ["xknock", "xknock_knock", "xknock_conceal"] {
        assert!(
            work.iter().any(|(name, _)| name == program),
            "{what}: {program} was not loaded: {work:?}"
        );
    }
    for (name, instructions) in &work {
        assert!(
            *instructions > 0,
            "{what}: the kernel reported no verifier work for {name}"
        );
        assert!(
            *instructions < VERIFIER_LIMIT / 2,
            "{what}: {name} took {instructions} of the verifier's {VERIFIER_LIMIT} instructions"
        );
    }
}

fn config() -> KernelConfig {
    let config = Config::parse(&article_config("60s", "\"tcp:22\"")).expect("valid");
    KernelConfig::try_from(&config).expect("fits")
}

#[test]
fn every_program_verifies_with_half_the_budget_to_spare() {
    require_root();
    let filter = Filter::load(&config()).expect("load");
    assert_headroom("filter", &filter);
}

#[test]
fn the_traced_copy_verifies_with_half_the_budget_to_spare() {
    require_root();
    let source = knock_common::ipv4_mapped([192, 0, 2, 1]);
    let filter = Filter::load_traced(&config(), &source).expect("load traced");
    assert_headroom("traced filter", &filter);
}
