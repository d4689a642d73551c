//! The filter's side of SPA, through BPF_PROG_TEST_RUN: a datagram to an SPA
//! port is stopped, answered as a closed port, and copied whole to the
//! loader's ring, at most `spa_datagrams_per_second` per CPU; what cannot be
//! an SPA packet is not copied; a denied source is not copied.

use std::net::IpAddr;

use aya::maps::{MapData, RingBuf};
use knock_common::{SpaDatagram, XDP_DROP, XDP_PASS};
use lab::{
    CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6,
    frames::{Fragment, Frame},
    require_root,
};
use xknock::{
    config::{Config, KernelConfig},
    loader::Filter,
};

const SPA_PORT: u16 = 62201;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// An SPA entry on udp:62201 next to a knock rule; `extra` goes first.
fn config(extra: &str) -> Config {
    let text = format!(
        r#"{extra}
[[rule]]
name = "ssh"
sequence = ["tcp:3721", "udp:4728", "tcp:6742"]
sequence_timeout = "10s"
open_for = "60s"
protect = ["tcp:22"]

[[spa]]
name = "fwknop"
listen = "udp:{SPA_PORT}"
key_base64 = "wqpO0bCb8v0WXmVOiK2LDsWbx84d7V5NzC4dgQlcCRM="
hmac_key_base64 = "Kxo4R01PrSUXAbpKKe7vuuDrh6OMLbiCHoSWxdfz3fsyHcIp/A2VYw8JMusAK9W5ZlAqBzEtx/grXJr5Rg/5Mw=="
open_for = "30s"
protect = ["tcp:22"]
"#
    );
    Config::parse(&text).expect("valid")
}

/// Runs every test-run on one CPU: the rate limit is per CPU.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

fn load(extra: &str) -> (Filter, RingBuf<MapData>) {
    require_root();
    pin_to_one_cpu();
    let kernel = KernelConfig::try_from(&config(extra)).expect("fits");
    let mut filter = Filter::load(&kernel).expect("load");
    let ring = filter.maps_mut().take_spa_datagrams().expect("SPA ring");
    (filter, ring)
}

fn spa_frame(src: &str, dst: &str, payload: usize) -> Frame {
    Frame {
        payload,
        ..Frame::udp(ip(src), ip(dst), SPA_PORT)
    }
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<(IpAddr, u16, Vec<u8>)> {
    let mut all = Vec::new();
    while let Some(item) = ring.next() {
        let (src, port, payload) = SpaDatagram::decode(&item).expect("a whole record");
        all.push((xknock::loader::display_addr(&src), port, payload.to_vec()));
    }
    all
}

fn count(filter: &Filter, reason: &str) -> u64 {
    filter.maps().counters().expect("counters")[reason]
}

/// Source, destination, and how the frame is shaped.
type Framing = (&'static str, &'static str, fn(&mut Frame));

#[test]
fn datagrams_to_an_spa_port_are_copied_whole_and_stopped() {
    let (filter, mut ring) = load("");
    let framings: [Framing; 3] = [
        (CLIENT_V4, SERVER_V4, |_| {}),
        (CLIENT_V4, SERVER_V4, |f| {
            f.ipv4_options = 12;
            f.vlan_tags = vec![0x88a8, 0x8100];
        }),
        (CLIENT_V6, SERVER_V6, |f| {
            f.ipv6_ext = vec![lab::frames::DEST_OPTS];
        }),
    ];
    for (i, (src, dst, shape)) in framings.iter().enumerate() {
        let mut frame = spa_frame(src, dst, 140 + 300 * i);
        shape(&mut frame);
        let (bytes, _) = frame.build();
        assert!(
            stopped(&filter, &bytes),
            "an SPA datagram never reaches its port"
        );
        let copied = drain(&mut ring);
        assert_eq!(copied.len(), 1, "one record per datagram");
        let (source, port, payload) = &copied[0];
        assert_eq!(*source, ip(src));
        assert_eq!(*port, SPA_PORT);
        assert_eq!(payload.len(), frame.payload);
        assert_eq!(
            payload.as_slice(),
            &bytes[bytes.len() - frame.payload..],
            "the payload as sent"
        );
    }
    assert_eq!(count(&filter, "drop_spa_copied"), 3);
    assert_eq!(count(&filter, "pass_unprotected"), 0);
}

/// Whether the filter stopped `bytes`: dropped it, or passed it steered to
/// the host's closed port (rewritten: a frame it lets through leaves as it
/// came).
fn stopped(filter: &Filter, bytes: &[u8]) -> bool {
    let (action, out) = filter.test_run_output(bytes).expect("test run");
    action == XDP_DROP || (action == XDP_PASS && out != bytes)
}

#[test]
fn an_spa_port_is_answered_by_the_host_as_a_closed_port() {
    let (filter, _ring) = load("");
    let mut frame = spa_frame(CLIENT_V4, SERVER_V4, 200);
    frame.checksums = true;
    let bytes = frame.build().0;
    let (action, out) = filter.test_run_output(&bytes).expect("test run");
    assert_eq!(
        action, XDP_PASS,
        "conceal = \"closed\" hands it to the host"
    );
    // Ethernet, IPv4 (20 bytes), then the UDP header: steered to port 0,
    // from another source port, the payload as sent.
    assert_eq!((out[36], out[37]), (0, 0), "to the host's closed port 0");
    assert_ne!(out[34..36], bytes[34..36], "from the flow's steered port");
    assert_eq!(out[42..], bytes[42..]);

    let (filter, _ring) = load("conceal = \"drop\"");
    let (action, _) = filter.test_run_output(&frame.build().0).expect("test run");
    assert_eq!(action, XDP_DROP, "conceal = \"drop\" stays silent");
}

#[test]
fn what_cannot_be_an_spa_packet_is_not_copied() {
    let (filter, mut ring) = load("");
    let too_short = spa_frame(CLIENT_V4, SERVER_V4, 139).build().0;
    let too_long = spa_frame(CLIENT_V6, SERVER_V6, 1501).build().0;
    let mut first_fragment = spa_frame(CLIENT_V4, SERVER_V4, 400);
    first_fragment.fragment = Fragment::First;
    let first_fragment = first_fragment.build().0;
    // A UDP length beyond the frame: the copy fails, nothing half-copied
    // reaches the loader.
    let mut overlong = spa_frame(CLIENT_V4, SERVER_V4, 300).build().0;
    let udp_len_at = 14 + 20 + 4;
    overlong[udp_len_at..udp_len_at + 2].copy_from_slice(&(8u16 + 900).to_be_bytes());
    for bytes in [&too_short, &too_long, &first_fragment, &overlong] {
        assert!(stopped(&filter, bytes), "never reaches its port");
    }
    assert!(drain(&mut ring).is_empty(), "nothing copied");
    assert_eq!(count(&filter, "drop_spa_unfit"), 4);
    assert_eq!(count(&filter, "drop_spa_copied"), 0);
}

#[test]
fn each_cpu_copies_at_most_its_rate_and_sheds_the_rest() {
    let (filter, mut ring) = load("spa_datagrams_per_second = 5\nconceal = \"drop\"");
    let bytes = spa_frame(CLIENT_V4, SERVER_V4, 200).build().0;
    // One call, 50 runs on this CPU within far less than a second.
    let action = filter.test_run(&bytes, 50).expect("test run").return_value;
    assert_eq!(action, XDP_DROP);
    assert_eq!(drain(&mut ring).len(), 5);
    assert_eq!(count(&filter, "drop_spa_copied"), 5);
    assert_eq!(count(&filter, "drop_spa_shed"), 45);
}

#[test]
fn a_denied_source_is_not_copied() {
    let (filter, mut ring) = load(&format!("deny = [\"{CLIENT_V4}/32\"]"));
    let bytes = spa_frame(CLIENT_V4, SERVER_V4, 200).build().0;
    filter.test_run(&bytes, 1).expect("test run");
    assert!(drain(&mut ring).is_empty());
    assert_eq!(count(&filter, "drop_denied"), 1);
    // Another source still is.
    let other = spa_frame("198.18.0.9", SERVER_V4, 200).build().0;
    filter.test_run(&other, 1).expect("test run");
    assert_eq!(drain(&mut ring).len(), 1);
}
