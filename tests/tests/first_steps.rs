//! The first steps' table through BPF_PROG_TEST_RUN: a new first step
//! takes a free way of its source's bucket, else displaces the oldest
//! record there, and nothing else; a displaced source's second step is no
//! step; sources past their first step, grants and a flood of first steps
//! live apart. (The differential all but never fills a bucket: at most
//! five sources, whose first steps share their bucket.)

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use knock_common::{
    Addr, FirstStepKey, SourceRule, TCP_SYN, XDP_DROP, XDP_PASS, addr_words, ipv4_mapped,
    source_hash,
};
use lab::{SERVER_V4, frames::Frame, require_root};
use xknock::{
    config::{Config, KernelConfig},
    loader::{Filter, monotonic_ns},
};

const SECOND: u64 = 1_000_000_000;

/// One rule, a table of two buckets of eight, nothing answered.
const CONFIG: &str = r#"conceal = "drop"
[limits]
first_step_entries = 16
[[rule]]
name = "ssh"
sequence = ["tcp:3721", "udp:4728", "tcp:6742"]
sequence_timeout = "1h"
open_for = "1h"
protect = ["tcp:22"]
"#;

fn load() -> Filter {
    require_root();
    let config = Config::parse(CONFIG).expect("valid");
    Filter::load(&KernelConfig::try_from(&config).expect("fits")).expect("load")
}

fn server() -> IpAddr {
    SERVER_V4.parse().expect("literal")
}

fn syn(src: Ipv4Addr, port: u16) -> Vec<u8> {
    Frame::tcp(IpAddr::V4(src), server(), port, TCP_SYN)
        .build()
        .0
}

fn datagram(src: Ipv4Addr, port: u16) -> Vec<u8> {
    Frame::udp(IpAddr::V4(src), server(), port).build().0
}

fn run(filter: &Filter, frame: &[u8]) -> u32 {
    filter.test_run(frame, 1).expect("test run").return_value
}

fn addr(src: Ipv4Addr) -> Addr {
    ipv4_mapped(src.octets())
}

/// The bucket a source's first steps live in.
fn bucket_of(filter: &Filter, src: Ipv4Addr) -> u32 {
    let settings = filter.maps().settings().expect("settings");
    let hash = source_hash(&addr_words(&addr(src)), settings.source_seed);
    FirstStepKey::new(hash, settings.first_step_bucket_bits, 0, 0).bucket
}

/// `n` sources of 198.18.0.0/16 whose first steps share one bucket.
fn sharing_a_bucket(filter: &Filter, n: usize) -> Vec<Ipv4Addr> {
    let all = (2..u16::MAX).map(|i| Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8));
    let first = bucket_of(filter, Ipv4Addr::new(198, 18, 0, 2));
    let picked: Vec<Ipv4Addr> = all
        .filter(|&a| bucket_of(filter, a) == first)
        .take(n)
        .collect();
    assert_eq!(picked.len(), n, "enough sources in one bucket");
    picked
}

/// Which of `sources` the kernel holds progress for, and how far.
fn progress(filter: &Filter, sources: &[Ipv4Addr]) -> Vec<(Ipv4Addr, u32)> {
    let addrs: Vec<Addr> = sources.iter().map(|&s| addr(s)).collect();
    let mut held: Vec<(Ipv4Addr, u32)> = filter
        .maps()
        .progress_of(&addrs, monotonic_ns())
        .expect("progress")
        .into_iter()
        .map(|(SourceRule { addr, .. }, p)| {
            let v4 = IpAddr::from(addr).to_canonical();
            let IpAddr::V4(v4) = v4 else {
                panic!("an IPv4 source")
            };
            (v4, p.next_step)
        })
        .collect();
    held.sort_unstable();
    held
}

fn counter(filter: &Filter, reason: &str) -> u64 {
    filter.maps().counters().expect("counters")[reason]
}

#[test]
fn a_new_first_step_displaces_the_oldest_of_its_bucket_and_nothing_else() {
    let mut filter = load();
    // Ten sources of one bucket: one past its first step, one granted,
    // eight first steps to fill the bucket, and one more.
    let sources = sharing_a_bucket(&filter, 11);
    let (later, granted, steps) = (sources[0], sources[1], &sources[2..]);
    assert_eq!(run(&filter, &syn(later, 3721)), XDP_DROP);
    assert_eq!(run(&filter, &datagram(later, 4728)), XDP_DROP);
    for frame in [
        syn(granted, 3721),
        datagram(granted, 4728),
        syn(granted, 6742),
    ] {
        assert_eq!(run(&filter, &frame), XDP_DROP);
    }
    assert_eq!(run(&filter, &syn(granted, 22)), XDP_PASS, "the grant");
    let everyone: Vec<Addr> = sources.iter().map(|&s| addr(s)).collect();
    // Eight first steps, a second apart: the bucket's eight ways, oldest
    // first.
    for &src in &steps[..8] {
        assert_eq!(run(&filter, &syn(src, 3721)), XDP_DROP);
        filter.maps_mut().age(SECOND, &everyone).expect("age");
    }
    let occupancy = filter.maps().occupancy().expect("occupancy")["FIRST_STEPS"];
    assert_eq!((occupancy.entries, occupancy.max_entries), (8, 16));
    let mut expected: Vec<(Ipv4Addr, u32)> = steps[..8].iter().map(|&s| (s, 1)).collect();
    expected.push((later, 2));
    expected.sort_unstable();
    assert_eq!(progress(&filter, &sources), expected, "a full bucket");
    // The ninth displaces the oldest, the first of the eight.
    assert_eq!(run(&filter, &syn(steps[8], 3721)), XDP_DROP);
    expected.retain(|&(s, _)| s != steps[0]);
    expected.push((steps[8], 1));
    expected.sort_unstable();
    assert_eq!(
        progress(&filter, &sources),
        expected,
        "the oldest displaced"
    );
    // Its second step is then no step; the next one's is.
    let advanced = counter(&filter, "drop_knock_advanced");
    let no_step = counter(&filter, "drop_knock_port");
    assert_eq!(run(&filter, &datagram(steps[0], 4728)), XDP_DROP);
    assert_eq!(counter(&filter, "drop_knock_port"), no_step + 1);
    assert_eq!(run(&filter, &datagram(steps[1], 4728)), XDP_DROP);
    assert_eq!(counter(&filter, "drop_knock_advanced"), advanced + 1);
    assert!(progress(&filter, &[steps[0]]).is_empty());
    assert_eq!(progress(&filter, &[steps[1]]), [(steps[1], 2)]);
    // A flood of first steps from other sources reaches neither the
    // source past its first step nor the grant.
    for i in 0..20_000u32 {
        let src = Ipv4Addr::from(0x0a00_0000 + i);
        assert_eq!(run(&filter, &syn(src, 3721)), XDP_DROP);
    }
    let mut after = vec![(later, 2), (steps[1], 2)];
    after.sort_unstable();
    assert_eq!(
        progress(&filter, &[later, steps[1]]),
        after,
        "after the flood"
    );
    assert_eq!(run(&filter, &syn(later, 6742)), XDP_DROP);
    assert_eq!(
        run(&filter, &syn(later, 22)),
        XDP_PASS,
        "its knock completed"
    );
    assert_eq!(run(&filter, &syn(granted, 22)), XDP_PASS, "the grant kept");
    assert_eq!(run(&filter, &syn(steps[1], 6742)), XDP_DROP);
    assert_eq!(run(&filter, &syn(steps[1], 22)), XDP_PASS);
}

#[test]
fn a_first_step_times_out_to_the_unit_its_record_keeps() {
    let mut filter = load();
    let src = Ipv4Addr::new(198, 18, 7, 7);
    assert_eq!(run(&filter, &syn(src, 3721)), XDP_DROP);
    let started = progress(&filter, &[src]);
    assert_eq!(started, [(src, 1)]);
    // Within the hour, the second step still counts; past it, it resets.
    filter
        .maps_mut()
        .age(3599 * SECOND, &[addr(src)])
        .expect("age");
    assert_eq!(run(&filter, &datagram(src, 4728)), XDP_DROP);
    assert_eq!(progress(&filter, &[src]), [(src, 2)], "in time");
    let other = Ipv4Addr::new(198, 18, 7, 8);
    assert_eq!(run(&filter, &syn(other, 3721)), XDP_DROP);
    let hour_and_a_bit = Duration::from_secs(3600).as_nanos() as u64 + 5_000_000;
    filter
        .maps_mut()
        .age(hour_and_a_bit, &[addr(other)])
        .expect("age");
    let resets = counter(&filter, "drop_knock_port");
    assert_eq!(run(&filter, &datagram(other, 4728)), XDP_DROP);
    assert_eq!(counter(&filter, "drop_knock_port"), resets + 1, "timed out");
    assert!(progress(&filter, &[other]).is_empty());
}
