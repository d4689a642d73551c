//! Files as written: the documented example, keys, ports, durations,
//! sequences and address lists, and how each mistake is named.

use super::*;

#[test]
fn product_example_parses() {
    let config = Config::parse(EXAMPLE).expect("the documented example is valid");
    assert_eq!(config.interfaces, ["eth0"]);
    let rule = &config.rules[0];
    assert_eq!(rule.name, "ssh");
    assert_eq!(
        rule.sequence(),
        [
            PortSpec(Knock::tcp(3721)),
            PortSpec(Knock::udp(4728)),
            PortSpec(Knock::tcp(6742))
        ]
    );
    assert_eq!(rule.sequence_timeout, Duration::from_secs(10));
    assert_eq!(rule.open_for, Duration::from_secs(60));
    assert_eq!(rule.protect, [PortSpec(Knock::tcp(22))]);
    assert_eq!(config.allow[0].mapped(), (120, ipv4_mapped([192, 0, 2, 0])));
    assert_eq!(
        config.deny[0].mapped(),
        (128, ipv4_mapped([198, 51, 100, 7]))
    );
    // 3721 < 4728 < 6742: the example is monotonic, which is worth a warning.
    assert_eq!(config.warnings.len(), 1);
    assert!(config.warnings[0].contains("line 8") && config.warnings[0].contains("monotonic"));
}

#[test]
fn unknown_key_names_line_and_key() {
    let e = error(&format!(
        "{}{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\nopen = \"5s\"\n",
        with_rule("")
    ));
    assert!(
        e.contains("line 7") && e.contains("unknown field `open`"),
        "{e}"
    );
    let e = error(&format!("bogus = 1\n{}", with_rule("")));
    assert!(e.contains("line 1") && e.contains("bogus"), "{e}");
}

#[test]
fn bad_ports_are_refused() {
    for (spec, problem) in [
        ("tcp:99999", "not a port"),
        ("tcp:0", "not a port"),
        ("sctp:22", "not a protocol"),
        ("22", "tcp:PORT"),
    ] {
        let e = error(&with_rule(&format!(
            "{SEQUENCE}{TIMES}protect = [\"{spec}\"]\n"
        )));
        assert!(e.contains("line 6") && e.contains(problem), "{spec}: {e}");
    }
}

#[test]
fn bad_durations_are_refused() {
    for value in ["\"10\"", "\"ten seconds\"", "\"0s\"", "10"] {
        let e = error(&with_rule(&format!(
            "{SEQUENCE}sequence_timeout = {value}\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n"
        )));
        assert!(
            e.contains("line 4") && e.contains("sequence_timeout"),
            "{value}: {e}"
        );
    }
    let ok = with_rule(&format!(
        "{SEQUENCE}sequence_timeout = \"500ms\"\nopen_for = \"1h\"\nprotect = [\"tcp:22\"]\n"
    ));
    let rule = &Config::parse(&ok).expect("valid").rules[0];
    assert_eq!(rule.sequence_timeout, Duration::from_millis(500));
    assert_eq!(rule.open_for, Duration::from_secs(3600));
}

#[test]
fn a_sequence_timeout_past_what_a_first_step_can_time_is_refused() {
    let rule = |timeout: &str| {
        with_rule(&format!(
            "{SEQUENCE}sequence_timeout = \"{timeout}\"\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n"
        ))
    };
    let e = error(&rule("25h"));
    assert!(
        e.contains("sequence_timeout") && e.contains("longer than the 24h"),
        "{e}"
    );
    Config::parse(&rule("24h")).expect("a day is accepted");
}

#[test]
fn sequences_that_are_empty_short_long_or_repeating_are_refused() {
    let rule = |sequence: &str| {
        with_rule(&format!(
            "sequence = [{sequence}]\n{TIMES}protect = [\"tcp:22\"]\n"
        ))
    };
    let e = error(&rule(""));
    assert!(
        e.contains("line 3") && e.contains("sequence") && e.contains("too short"),
        "{e}"
    );
    let e = error(&rule("\"tcp:1000\""));
    assert!(e.contains("too short"), "{e}");
    let long: Vec<String> = (0..17)
        .map(|i| format!("\"tcp:{}\"", 5000 - i * 7))
        .collect();
    let e = error(&rule(&long.join(", ")));
    assert!(e.contains("at most 16 steps"), "{e}");
    let e = error(&rule("\"tcp:1000\", \"udp:2000\", \"tcp:1000\""));
    assert!(e.contains("tcp:1000 appears twice"), "{e}");
    let two = Config::parse(&rule("\"tcp:2000\", \"udp:1000\"")).expect("two steps are allowed");
    assert!(
        two.warnings.iter().any(|w| w.contains("only 2 steps")),
        "{:?}",
        two.warnings
    );
}

#[test]
fn missing_rules_and_keys_are_refused() {
    assert!(error("interfaces = [\"eth0\"]\n").contains("no [[rule]]"));
    let e = error(&with_rule(&format!("{SEQUENCE}{TIMES}")));
    assert!(e.contains("missing field `protect`"), "{e}");
    let e = error(&with_rule(&format!("{SEQUENCE}{TIMES}protect = []\n")));
    assert!(e.contains("protects nothing"), "{e}");
}

#[test]
fn lists_take_prefixes_and_addresses_of_both_families() {
    let text = format!(
        "allow = [\"2001:db8::/32\", \"203.0.113.9\"]\ndeny = [\"10.1.2.3/8\"]\n{}",
        with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"))
    );
    let config = Config::parse(&text).expect("valid");
    assert_eq!(config.allow[0].mapped().0, 32);
    assert_eq!(
        config.allow[1].mapped(),
        (128, ipv4_mapped([203, 0, 113, 9]))
    );
    // Host bits are cleared so the trie holds the prefix itself.
    assert_eq!(config.deny[0].mapped(), (104, ipv4_mapped([10, 0, 0, 0])));
    let everything = format!(
        "allow = [\"::/0\"]\ndeny = [\"2001:db8::/32\"]\n{}",
        with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"))
    );
    let warnings = Config::parse(&everything).expect("valid").warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("line 1: allow: ::/0 also covers every IPv4 address"),
        "{warnings:?}"
    );
    let e = error(&format!("deny = [\"300.1.1.1\"]\n{}", with_rule("")));
    assert!(
        e.contains("line 1") && e.contains("not an address or CIDR prefix"),
        "{e}"
    );
}

#[test]
fn icmp_steps_take_a_payload_size_and_are_never_protected() {
    let ok = with_rule(&format!(
        "sequence = [\"icmp:512\", \"udp:4728\", \"tcp:6742\"]\n{TIMES}protect = [\"tcp:8443\"]\n"
    ));
    let config = Config::parse(&ok).expect("valid");
    assert_eq!(config.rules[0].sequence()[0], PortSpec(Knock::icmp(512)));
    assert_eq!(config.rules[0].sequence()[0].to_string(), "icmp:512");
    let kernel = KernelConfig::try_from(&config).expect("fits");
    let index = port_roles_index(knock_common::IPPROTO_ICMP, 512).expect("icmp");
    assert!(
        kernel
            .port_roles
            .iter()
            .any(|(i, r)| *i == index && r.knock_rules == 1)
    );
    for (bad, needle) in [
        ("icmp:1453", "not an echo payload size"),
        ("icmp:x", "not an echo payload size"),
        ("gre:1", "not a protocol (tcp, udp or icmp)"),
    ] {
        let text = with_rule(&format!(
            "sequence = [\"{bad}\", \"udp:4728\", \"tcp:6742\"]\n{TIMES}protect = [\"tcp:22\"]\n"
        ));
        assert!(error(&text).contains(needle), "{bad}: {}", error(&text));
    }
    let protected = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"icmp:64\"]\n"));
    assert!(
        error(&protected).contains("protect TCP or UDP ports"),
        "{}",
        error(&protected)
    );
}

#[test]
fn detach_finds_the_pin_dir_of_a_file_that_is_not_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("xknock.toml");
    let at = |text: &str| {
        std::fs::write(&path, text).expect("write");
        pin_dir_of(&path)
    };
    // Nothing to protect yet: not valid, and its pin_dir still found.
    let found = at("pin_dir = \"/sys/fs/bpf/elsewhere\"\ninterfaces = [\"eth0\"]\n");
    assert_eq!(found.expect("found"), Path::new("/sys/fs/bpf/elsewhere"));
    let found = at("interfaces = [\"eth0\"]\n");
    assert_eq!(found.expect("found"), Path::new(DEFAULT_PIN_DIR));
    let valid = format!(
        "pin_dir = \"/sys/fs/bpf/valid\"\n{}",
        with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"))
    );
    assert_eq!(at(&valid).expect("found"), Path::new("/sys/fs/bpf/valid"));
    assert!(at("not toml [").is_err());
    assert!(at("pin_dir = 7\n").is_err());
}
