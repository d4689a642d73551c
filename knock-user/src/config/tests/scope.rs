//! `grant_scope` on rules and SPA entries: the defaults admit the address
//! alone; a scope is refused past an IPv4 /16 or an IPv6 /32 and warned of
//! past a /24 or a /48; the kernel gets its masks and the scoped rules.

use knock_common::addr_words;

use super::*;

fn rule(scope: &str) -> String {
    with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n{scope}"))
}

#[test]
fn the_default_scope_is_the_address_alone() {
    let config = Config::parse(&rule("")).expect("valid");
    assert_eq!(config.rules[0].grant_scope.host_bits(), (0, 0));
    let kernel = KernelConfig::try_from(&config).expect("fits");
    assert_eq!(kernel.settings.scoped_rules, 0);
    assert_eq!(kernel.rules[0].ipv4_host_mask, [0; 4]);
    assert_eq!(kernel.rules[0].ipv6_host_mask, [0; 4]);
    let written = Config::parse(&rule("grant_scope = { ipv4 = 32, ipv6 = 128 }\n"));
    assert_eq!(
        written.expect("valid").rules[0].grant_scope,
        config.rules[0].grant_scope
    );
}

#[test]
fn a_scope_reaches_the_kernel_as_masks_and_a_scoped_rule() {
    let text = format!(
        "{}{}",
        rule("grant_scope = { ipv4 = 24 }\n"),
        with_spa(&format!(
            "{SPA_KEYS}open_for = \"30s\"\nprotect = [\"tcp:22\"]\ngrant_scope = {{ ipv6 = 56 }}\n"
        ))
    );
    let config = Config::parse(&text).expect("valid");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.rules[0].grant_scope.host_bits(), (8, 0));
    assert_eq!(config.rules[1].grant_scope.host_bits(), (0, 72));
    let kernel = KernelConfig::try_from(&config).expect("fits");
    assert_eq!(kernel.settings.scoped_rules, 0b11);
    let rule = &kernel.rules[0];
    let words = addr_words(&ipv4_mapped([198, 51, 100, 77]));
    let key = rule.grant_key(&words, false, 0);
    assert_eq!(key.addr, ipv4_mapped([198, 51, 100, 0]));
    assert_eq!(key.host_bits(), 8);
    let v6 = "2001:db8:1:2:3:4:5:6"
        .parse::<std::net::Ipv6Addr>()
        .unwrap();
    let key = kernel.rules[1].grant_key(&addr_words(&v6.octets()), true, 1);
    assert_eq!(
        std::net::Ipv6Addr::from(key.addr),
        "2001:db8:1::".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(key.host_bits(), 72);
}

#[test]
fn wide_scopes_are_warned_of_and_wider_ones_refused() {
    let config = Config::parse(&rule("grant_scope = { ipv4 = 16, ipv6 = 40 }\n")).expect("valid");
    assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
    assert!(
        config.warnings[0].contains("line 7")
            && config.warnings[0].contains("rule `ssh`: grant_scope")
            && config.warnings[0].contains("/16"),
        "{:?}",
        config.warnings
    );
    for (scope, problem) in [
        ("{ ipv4 = 15 }", "the widest scope is /16"),
        ("{ ipv6 = 31 }", "the widest scope is /32"),
        ("{ ipv4 = 0 }", "the widest scope is /16"),
        ("{ ipv4 = 33 }", "at most 32"),
        ("{ ipv6 = 129 }", "at most 128"),
    ] {
        let e = error(&rule(&format!("grant_scope = {scope}\n")));
        assert!(
            e.contains("line 7") && e.contains("grant_scope") && e.contains(problem),
            "{scope}: {e}"
        );
    }
    let e = error(&rule("grant_scope = { ipv4 = 24, ipv5 = 8 }\n"));
    assert!(e.contains("unknown field `ipv5`"), "{e}");
    let e = error(&with_spa(&format!(
        "{SPA_KEYS}open_for = \"30s\"\nprotect = [\"tcp:22\"]\ngrant_scope = {{ ipv4 = 8 }}\n"
    )));
    assert!(e.contains("spa `fwknop`: grant_scope"), "{e}");
}
