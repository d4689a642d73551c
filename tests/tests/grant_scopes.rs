//! Grant scopes through BPF_PROG_TEST_RUN: a knock grants its source's
//! prefix when the rule has a `grant_scope` (the address alone when it has
//! none); every address of the prefix then opens connections of its own,
//! nothing outside it does; knock progress stays per address; the loader
//! grants, revokes and retires prefixes as the kernel keys them.

use std::{net::IpAddr, time::Duration};

use knock_common::{
    Grant, GrantKey, TCP_ACK, TCP_SYN, XDP_DROP, XDP_PASS, addr_words, horizon_units, ipv4_mapped,
};
use lab::{SERVER_V4, SERVER_V6, frames::Frame, require_root};
use xknock::{
    config::{Config, KernelConfig},
    loader::{Filter, grant_from_now, grant_prefix, key_addr, monotonic_ns},
};

const SSH: u16 = 22;
const MINUTE: Duration = Duration::from_secs(60);

/// The article's rule, its grants admitting `scope`, nothing answered.
fn config(scope: &str) -> String {
    format!(
        r#"conceal = "drop"
[[rule]]
name = "ssh"
sequence = ["tcp:3721", "udp:4728", "tcp:6742"]
sequence_timeout = "1h"
open_for = "1h"
protect = ["tcp:22"]
{scope}
"#
    )
}

const SCOPED: &str = "grant_scope = { ipv4 = 24, ipv6 = 64 }";

fn load(scope: &str) -> Filter {
    require_root();
    let config = Config::parse(&config(scope)).expect("valid");
    Filter::load(&KernelConfig::try_from(&config).expect("fits")).expect("load")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn server(src: IpAddr) -> IpAddr {
    ip(if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 })
}

fn run(filter: &Filter, frame: &Frame) -> u32 {
    filter
        .test_run(&frame.build().0, 1)
        .expect("test run")
        .return_value
}

fn syn(filter: &Filter, src: &str) -> u32 {
    let src = ip(src);
    run(filter, &Frame::tcp(src, server(src), SSH, TCP_SYN))
}

/// The rule's knock from `src`, each step from the address `steps` names.
fn knock_from(filter: &Filter, steps: [&str; 3]) {
    let [first, second, third] = steps.map(ip);
    for (src, frame) in [
        (first, Frame::tcp(first, server(first), 3721, TCP_SYN)),
        (second, Frame::udp(second, server(second), 4728)),
        (third, Frame::tcp(third, server(third), 6742, TCP_SYN)),
    ] {
        assert_eq!(run(filter, &frame), XDP_DROP, "a knock step from {src}");
    }
}

fn knock(filter: &Filter, src: &str) {
    knock_from(filter, [src; 3]);
}

/// The live grants, as prefixes.
fn grants(filter: &Filter) -> Vec<String> {
    let now = monotonic_ns();
    let mut grants: Vec<String> = filter
        .maps()
        .grants()
        .expect("grants")
        .into_iter()
        .filter(|(_, grant)| grant.expires_ns > now)
        .map(|(key, _)| grant_prefix(&key).to_string())
        .collect();
    grants.sort();
    grants
}

#[test]
fn a_knock_admits_its_prefix_and_nothing_outside_it() {
    let filter = load(SCOPED);
    assert_eq!(syn(&filter, "198.51.100.99"), XDP_DROP, "before the knock");
    knock(&filter, "198.51.100.7");
    assert_eq!(grants(&filter), ["198.51.100.0/24"]);
    for inside in [
        "198.51.100.7",
        "198.51.100.99",
        "198.51.100.0",
        "198.51.100.255",
    ] {
        assert_eq!(syn(&filter, inside), XDP_PASS, "{inside} is in the /24");
    }
    for outside in ["198.51.101.7", "198.51.99.7", "203.0.113.7", "fd00::7"] {
        assert_eq!(syn(&filter, outside), XDP_DROP, "{outside} is not");
    }

    knock(&filter, "2001:db8:1:2:aaaa:bbbb:cccc:dddd");
    assert_eq!(grants(&filter), ["198.51.100.0/24", "2001:db8:1:2::/64"]);
    // A privacy address of the same /64, and not the next /64.
    assert_eq!(syn(&filter, "2001:db8:1:2:1111:2222:3333:4444"), XDP_PASS);
    assert_eq!(syn(&filter, "2001:db8:1:3:aaaa:bbbb:cccc:dddd"), XDP_DROP);
}

#[test]
fn without_a_scope_only_the_knocking_address_is_admitted() {
    for scope in ["", "grant_scope = { ipv4 = 32, ipv6 = 128 }"] {
        let filter = load(scope);
        knock(&filter, "198.51.100.7");
        knock(&filter, "2001:db8:1:2::7");
        assert_eq!(
            grants(&filter),
            ["198.51.100.7/32", "2001:db8:1:2::7/128"],
            "{scope:?}"
        );
        assert_eq!(syn(&filter, "198.51.100.7"), XDP_PASS);
        assert_eq!(syn(&filter, "198.51.100.99"), XDP_DROP, "{scope:?}");
        assert_eq!(syn(&filter, "2001:db8:1:2::7"), XDP_PASS);
        assert_eq!(syn(&filter, "2001:db8:1:2::8"), XDP_DROP, "{scope:?}");
    }
}

#[test]
fn knock_steps_are_per_address_even_within_a_scope() {
    let filter = load(SCOPED);
    // Three addresses of one /24, a step each: nobody completes.
    knock_from(&filter, ["198.51.100.7", "198.51.100.8", "198.51.100.9"]);
    assert!(grants(&filter).is_empty(), "{:?}", grants(&filter));
    assert_eq!(syn(&filter, "198.51.100.7"), XDP_DROP);
    assert_eq!(syn(&filter, "198.51.100.9"), XDP_DROP);
}

#[test]
fn flows_stay_per_flow_when_the_grant_is_a_prefix() {
    let mut filter = load(SCOPED);
    knock(&filter, "198.51.100.7");
    let connection = |filter: &Filter, src: &str, flags| {
        let src = ip(src);
        run(filter, &Frame::tcp(src, server(src), SSH, flags))
    };
    assert_eq!(connection(&filter, "198.51.100.99", TCP_SYN), XDP_PASS);
    // The grant goes; the connection it admitted lives on, and only it.
    let (grants_removed, _) = filter
        .maps_mut()
        .revoke(&key_addr(ip("198.51.100.7")), 0, None, false)
        .expect("revoke");
    assert_eq!(grants_removed, 1, "the /24 holds the address");
    assert_eq!(connection(&filter, "198.51.100.99", TCP_ACK), XDP_PASS);
    assert_eq!(connection(&filter, "198.51.100.98", TCP_ACK), XDP_DROP);
    assert_eq!(connection(&filter, "198.51.100.98", TCP_SYN), XDP_DROP);
}

#[test]
fn the_loader_grants_revokes_and_retires_prefixes_as_the_kernel_keys_them() {
    let mut filter = load(SCOPED);
    let maps = filter.maps_mut();
    // `xknock grant 198.51.100.50`, `xknock revoke 198.51.100.0/24`.
    let key = maps
        .grant(&key_addr(ip("198.51.100.50")), 0, grant_from_now(MINUTE))
        .expect("grant");
    assert_eq!(grant_prefix(&key).to_string(), "198.51.100.0/24");
    assert_eq!(syn(&filter, "198.51.100.1"), XDP_PASS);
    let (removed, _) = filter
        .maps_mut()
        .revoke(&key_addr(ip("198.51.100.0")), 8, Some(&[0]), false)
        .expect("revoke");
    assert_eq!(removed, 1);
    // The connection it admitted stays (no --flows); another does not open.
    assert_eq!(syn(&filter, "198.51.100.1"), XDP_PASS);
    assert_eq!(syn(&filter, "198.51.100.2"), XDP_DROP);
    // With --flows, a revoke of an address ends its prefix's grant and the
    // connections that grant admitted there.
    filter
        .maps_mut()
        .grant(&key_addr(ip("198.51.100.50")), 0, grant_from_now(MINUTE))
        .expect("grant");
    assert_eq!(syn(&filter, "198.51.100.3"), XDP_PASS);
    let ended = filter
        .maps_mut()
        .revoke(&key_addr(ip("198.51.100.77")), 0, None, true)
        .expect("revoke");
    assert_eq!(ended, (1, 2), "the /24 and the flows of .1 and .3");
    assert_eq!(syn(&filter, "198.51.100.1"), XDP_DROP);
    // A revoke of a prefix beside it removes nothing.
    filter
        .maps_mut()
        .grant(&key_addr(ip("198.51.100.50")), 0, grant_from_now(MINUTE))
        .expect("grant");
    let (removed, _) = filter
        .maps_mut()
        .revoke(&key_addr(ip("198.51.101.0")), 8, None, false)
        .expect("revoke");
    assert_eq!(removed, 0);
    assert_eq!(syn(&filter, "198.51.100.1"), XDP_PASS);

    // A grant made under the address-alone scope, before a reload gave the
    // rule its /24: no lookup finds it (it widens to nothing), and the
    // commit's tidying removes it.
    let alone = GrantKey::new(&addr_words(&ipv4_mapped([203, 0, 113, 7])), 0, 0);
    let maps = filter.maps_mut();
    maps.plant_grant(&alone, &grant_from_now(MINUTE))
        .expect("plant");
    // The /24's horizon raised by a grant that is over already (the
    // kernel's coarse clock may lag this one by a few ms).
    let now = monotonic_ns();
    let over = Grant {
        expires_ns: now - 1_000_000_000,
        granted_ns: now - 2_000_000_000,
    };
    maps.grant(&key_addr(ip("203.0.113.200")), 0, over)
        .expect("grant");
    let (_, horizon) = filter
        .maps()
        .source_horizon(&key_addr(ip("203.0.113.0")))
        .expect("horizon");
    assert!(
        horizon.admitted_until > horizon_units(monotonic_ns()),
        "looked up"
    );
    assert_eq!(syn(&filter, "203.0.113.7"), XDP_DROP);
    let rules = filter.maps().rules().expect("rules");
    assert_eq!(
        filter
            .maps_mut()
            .drop_rescoped_grants(&rules)
            .expect("drop"),
        1,
        "the grant of the address alone goes, the /24s stay"
    );
}
