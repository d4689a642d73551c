//! Framing: knocks arrive through every framing the contract lists, and what
//! cannot be parsed down to its ports is dropped (fail closed). Checked
//! through BPF_PROG_TEST_RUN and with raw frames over veth.

use std::{net::IpAddr, time::Duration};

use knock_common::{XDP_DROP, XDP_PASS};
use lab::{
    CLIENT_V4, CLIENT_V6, Lab, SERVER_V4, SERVER_V6, Xknock, article_config,
    frames::{AUTH, DEST_OPTS, Fragment, Frame, HOP_BY_HOP, ROUTING, TCP_ACK, TCP_SYN},
    require_root,
    wire::Wire,
};
use xknock::{
    config::{Config, KernelConfig},
    loader::Filter,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn load() -> Filter {
    require_root();
    // Stopped packets are dropped, not steered to the host's closed port,
    // so that a verdict reads as pass or drop (concealment: conceal.rs).
    let config = format!(
        "conceal = \"drop\"\n{}",
        article_config("60s", "\"tcp:22\"")
    );
    let config = Config::parse(&config).expect("valid");
    Filter::load(&KernelConfig::try_from(&config).expect("fits")).expect("load")
}

fn verdict(filter: &Filter, bytes: &[u8]) -> u32 {
    filter.test_run(bytes, 1).expect("test run").return_value
}

/// The article's knock (tcp:3721 udp:4728 tcp:6742) shaped by `shape`.
fn knock_frames(src: &str, dst: &str, shape: &impl Fn(&mut Frame)) -> Vec<Vec<u8>> {
    let (src, dst) = (ip(src), ip(dst));
    [
        Frame::tcp(src, dst, 3721, TCP_SYN),
        Frame::udp(src, dst, 4728),
        Frame::tcp(src, dst, 6742, TCP_SYN),
    ]
    .into_iter()
    .map(|mut frame| {
        shape(&mut frame);
        frame.build().0
    })
    .collect()
}

type Shape = (&'static str, bool, fn(&mut Frame));

/// Every framing the contract promises to parse: (name, IPv6?, shape).
const PARSED: [Shape; 7] = [
    ("plain IPv4", false, |_| {}),
    ("IPv4 with 40 bytes of options", false, |f| {
        f.ipv4_options = 40;
    }),
    ("802.1Q tag", false, |f| f.vlan_tags = vec![0x8100]),
    ("802.1ad + 802.1Q tags", false, |f| {
        f.vlan_tags = vec![0x88a8, 0x8100];
    }),
    ("plain IPv6", true, |_| {}),
    ("IPv6 with 8 extension headers", true, |f| {
        f.ipv6_ext = vec![
            HOP_BY_HOP, DEST_OPTS, ROUTING, AUTH, DEST_OPTS, ROUTING, AUTH, DEST_OPTS,
        ];
    }),
    ("IPv6 first fragment, tagged", true, |f| {
        f.fragment = Fragment::First;
        f.vlan_tags = vec![0x8100];
    }),
];

#[test]
fn knocks_in_every_supported_framing_open_the_port() {
    for (name, v6, shape) in PARSED {
        let filter = load();
        let (src, dst) = if v6 {
            (CLIENT_V6, SERVER_V6)
        } else {
            (CLIENT_V4, SERVER_V4)
        };
        let mut ssh = Frame::tcp(ip(src), ip(dst), 22, TCP_SYN);
        shape(&mut ssh);
        let ssh = ssh.build().0;
        assert_eq!(
            verdict(&filter, &ssh),
            XDP_DROP,
            "{name}: SYN to 22 before knocking"
        );
        for frame in knock_frames(src, dst, &shape) {
            assert_eq!(
                verdict(&filter, &frame),
                XDP_DROP,
                "{name}: knocks are dropped"
            );
        }
        assert_eq!(
            verdict(&filter, &ssh),
            XDP_PASS,
            "{name}: SYN to 22 after knocking"
        );
        let counters = filter.maps().counters().expect("counters");
        assert_eq!(counters["drop_knock_granted"], 1, "{name}: {counters:?}");
    }
}

#[test]
fn frames_that_cannot_be_parsed_to_their_ports_are_dropped() {
    let filter = load();
    let (src, dst) = (ip(CLIENT_V4), ip(SERVER_V4));
    // Traffic to an unprotected port would pass: these drops come from the framing.
    let web = Frame::tcp(src, dst, 80, TCP_SYN);
    assert_eq!(verdict(&filter, &web.build().0), XDP_PASS);

    let mut three_tags = web.clone();
    three_tags.vlan_tags = vec![0x88a8, 0x8100, 0x8100];
    assert_eq!(
        verdict(&filter, &three_tags.build().0),
        XDP_DROP,
        "a third VLAN tag"
    );

    let mut long_chain = Frame::tcp(ip(CLIENT_V6), ip(SERVER_V6), 80, TCP_SYN);
    long_chain.ipv6_ext = vec![DEST_OPTS; 9];
    assert_eq!(
        verdict(&filter, &long_chain.build().0),
        XDP_DROP,
        "nine extension headers"
    );

    // Cut at every header boundary short of the end of the TCP header.
    for framed in [web.clone(), three_tags, long_chain] {
        let (bytes, boundaries) = framed.build();
        for &cut in boundaries.iter().filter(|&&b| b >= 14 && b < bytes.len()) {
            assert_eq!(
                verdict(&filter, &bytes[..cut]),
                XDP_DROP,
                "cut at {cut} of {framed:?}"
            );
        }
    }

    // A first fragment carrying only the ports, not the TCP flags.
    let mut first = web;
    first.fragment = Fragment::First;
    let (bytes, _) = first.build();
    let ports_only = bytes.len() - 20 + 8;
    assert_eq!(
        verdict(&filter, &bytes[..ports_only]),
        XDP_DROP,
        "short first fragment"
    );

    let counters = filter.maps().counters().expect("counters");
    assert!(counters["drop_too_many_vlan_tags"] >= 1, "{counters:?}");
    assert!(
        counters["drop_ext_header_chain_too_long"] >= 1,
        "{counters:?}"
    );
    assert!(counters["drop_malformed"] >= 3, "{counters:?}");
}

#[test]
fn later_fragments_and_non_ip_frames_pass() {
    let filter = load();
    for (src, dst) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
        let mut later = Frame::tcp(ip(src), ip(dst), 22, TCP_ACK);
        later.fragment = Fragment::Later(185);
        let (bytes, boundaries) = later.build();
        assert_eq!(
            verdict(&filter, &bytes),
            XDP_PASS,
            "later fragment to 22 from {src}"
        );
        // Even when nothing follows the fragment information.
        let ip_end = boundaries[boundaries.len() - 3];
        assert_eq!(
            verdict(&filter, &bytes[..ip_end]),
            XDP_PASS,
            "bare later fragment from {src}"
        );
    }
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(verdict(&filter, &arp), XDP_PASS);
    let counters = filter.maps().counters().expect("counters");
    assert_eq!(counters["pass_later_fragment"], 4, "{counters:?}");
    assert_eq!(counters["pass_not_ip"], 1, "{counters:?}");
}

/// Sends raw Ethernet frames out of the client's veth, 5 ms apart so each
/// knock step arrives in order and on time.
fn send_raw(lab: &Lab, frames: &[Vec<u8>]) {
    send_raw_paced(lab, frames, Duration::from_millis(5));
}

/// Sends raw frames back to back.
fn send_raw_fast(lab: &Lab, frames: &[Vec<u8>]) {
    send_raw_paced(lab, frames, Duration::ZERO);
}

fn send_raw_paced(lab: &Lab, frames: &[Vec<u8>], pause: Duration) {
    let wire = Wire::open(&lab.client, &lab.client_if);
    for frame in frames {
        wire.send(frame);
        std::thread::sleep(pause);
    }
}

#[test]
fn tagged_and_extension_header_knocks_over_veth_open_the_door() {
    let lab = Lab::new();
    let xknock = Xknock::start(
        &lab,
        &article_config("60s", "\"tcp:22\""),
        &["--mode", "native"],
        false,
    );
    // This kernel has no VLAN devices: the tagged frames go out raw.
    let double_tagged = knock_frames(CLIENT_V4, SERVER_V4, &|f: &mut Frame| {
        f.vlan_tags = vec![0x88a8, 0x8100];
        f.ipv4_options = 8;
    });
    send_raw(&lab, &double_tagged);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);

    let chained = knock_frames(CLIENT_V6, SERVER_V6, &|f: &mut Frame| {
        f.ipv6_ext = vec![HOP_BY_HOP, DEST_OPTS, ROUTING];
    });
    let too_long = knock_frames(CLIENT_V6, SERVER_V6, &|f: &mut Frame| {
        f.ipv6_ext = vec![DEST_OPTS; 9];
    });
    send_raw(&lab, &[too_long, chained].concat());
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V6)]);
    assert_eq!(
        xknock
            .events()
            .iter()
            .filter(|e| e["event"] == "progress")
            .count(),
        4,
        "only the parsable knocks progress: {:#?}",
        xknock.events()
    );
    let (status, log) = xknock.stop();
    assert!(status.success());
    let verdicts = lab::verdicts(&log).expect("verdict line");
    assert!(
        verdicts.contains("drop_ext_header_chain_too_long=3"),
        "{verdicts}"
    );
}

#[test]
fn hostile_garbage_over_veth_leaves_the_filter_working() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let xknock = Xknock::start(&lab, &article_config("60s", "\"tcp:22\""), &[], false);
    // Random bytes behind IPv4, IPv6 and VLAN EtherTypes, and real knock
    // frames cut short, from a fixed seed so a failure can be replayed.
    let mut seed: u64 = 0x5eed_cafe_f00d_d00d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let knocks = knock_frames(CLIENT_V4, SERVER_V4, &|_: &mut Frame| {});
    let mut garbage = Vec::new();
    for i in 0..3000 {
        let len = 14 + (next() % 200) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let ethertype: [u8; 2] = match i % 4 {
            0 => [0x08, 0x00],
            1 => [0x86, 0xdd],
            2 => [0x81, 0x00],
            _ => [0x88, 0xa8],
        };
        frame[12..14].copy_from_slice(&ethertype);
        garbage.push(frame);
        let knock = &knocks[i % knocks.len()];
        garbage.push(knock[..14 + (next() as usize % (knock.len() - 14))].to_vec());
    }
    send_raw_fast(&lab, &garbage);
    // Still attached, still deciding: a real knock opens the door.
    assert_eq!(lab.attached_xdp().as_deref(), Some("xdp"));
    lab::article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), lab::Reach::Open);
    let (status, log) = xknock.stop();
    assert!(status.success(), "{log:?}");
    let verdicts = lab::verdicts(&log).expect("verdict line");
    assert!(verdicts.contains("drop_malformed="), "{verdicts}");
}
