//! The flattening into what the XDP program's maps hold, and the sizes,
//! timeouts and penalty that go with it.

use super::*;

#[test]
fn kernel_config_flattens_rules_and_port_roles() {
    let config = Config::parse(EXAMPLE).expect("valid");
    let kernel = KernelConfig::try_from(&config).expect("fits the kernel");
    assert_eq!(kernel.settings.rules, 1);
    assert_eq!(kernel.settings.allow_entries, 1);
    assert_eq!(kernel.rules[0].steps, 3);
    assert_eq!(kernel.rules[0].sequence[1], Knock::udp(4728));
    assert_eq!(kernel.rules[0].open_for_ns, 60_000_000_000);
    let role = |proto, port| {
        let index = port_roles_index(proto, port).expect("tcp/udp");
        kernel
            .port_roles
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, r)| *r)
    };
    assert_eq!(
        role(IPPROTO_TCP, 22),
        Some(PortRoles {
            protect_rules: 1,
            ..PortRoles::default()
        })
    );
    assert_eq!(
        role(IPPROTO_UDP, 4728),
        Some(PortRoles {
            knock_rules: 1,
            ..PortRoles::default()
        })
    );
    assert_eq!(
        role(IPPROTO_TCP, 4728),
        None,
        "protocol is part of the port"
    );
    assert_eq!(kernel.port_roles.len(), 4);
}

#[test]
fn conceal_defaults_to_closed_and_takes_drop() {
    let rule = format!("{}{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n", with_rule(""));
    let kernel = |text: &str| {
        KernelConfig::try_from(&Config::parse(text).expect("valid"))
            .expect("fits")
            .settings
            .conceal
    };
    assert_eq!(Config::parse(&rule).unwrap().conceal, Conceal::Closed);
    assert_eq!(kernel(&rule), CONCEAL_CLOSED);
    assert_eq!(kernel(&format!("conceal = \"drop\"\n{rule}")), CONCEAL_DROP);
    assert_eq!(
        kernel(&format!("conceal = \"closed\"\n{rule}")),
        CONCEAL_CLOSED
    );
    let e = error(&format!("conceal = \"silent\"\n{rule}"));
    assert!(e.contains("line 1") && e.contains("silent"), "{e}");
}

#[test]
fn limits_and_interfaces_are_checked() {
    let rule = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"));
    let e = error(&format!("[limits]\ngrant_entries = 0\n{rule}"));
    assert!(
        e.contains("line 2") && e.contains("limits.grant_entries"),
        "{e}"
    );
    let e = error(&format!(
        "interfaces = [\"a-very-long-interface-name\"]\n{rule}"
    ));
    assert!(
        e.contains("line 1") && e.contains("not an interface name"),
        "{e}"
    );
    let config = Config::parse(&format!(
        "[limits]\nflow_entries = 1024\n[flows]\nudp_idle = \"30s\"\n{rule}"
    ))
    .expect("valid");
    let kernel = KernelConfig::try_from(&config).expect("fits");
    assert_eq!(kernel.flow_entries, 1024);
    assert_eq!(kernel.first_step_entries, 1 << 20);
    // A million first steps in buckets of eight.
    assert_eq!(kernel.entries(MapLimit::FirstStepEntries), 1 << 17);
    assert_eq!(kernel.settings.first_step_bucket_bits, 17);
    assert_eq!(kernel.progress_entries, 16_384);
    assert_eq!(kernel.settings.udp_idle_ns, 30_000_000_000);
}

#[test]
fn penalty_has_safe_defaults_and_can_be_tuned_or_turned_off() {
    let rule = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"));
    let kernel =
        |text: &str| KernelConfig::try_from(&Config::parse(text).expect("valid")).expect("fits");
    let defaults = kernel(&rule).settings;
    assert_eq!(
        (
            defaults.penalty_failures,
            defaults.penalty_window_ns,
            defaults.penalty_ns
        ),
        (5, 60_000_000_000, 300_000_000_000)
    );
    let tuned = kernel(&format!(
        "[penalty]\nfailures = 3\nwindow = \"10s\"\nduration = \"1h\"\n{rule}"
    ))
    .settings;
    assert_eq!(
        (tuned.penalty_failures, tuned.penalty_ns),
        (3, 3_600_000_000_000)
    );
    assert_eq!(
        kernel(&format!("[penalty]\nfailures = 0\n{rule}"))
            .settings
            .penalty_failures,
        0
    );
    let e = error(&format!("[penalty]\nduration = \"forever\"\n{rule}"));
    assert!(e.contains("line 2") && e.contains("duration"), "{e}");
}

#[test]
fn horizons_cover_the_longest_sequence_and_the_longest_admission() {
    let text = "[flows]\ntcp_idle = \"2h\"\n[[rule]]\nname = \"a\"\n\
                sequence = [\"tcp:1\", \"udp:2\", \"tcp:3\"]\nsequence_timeout = \"10s\"\n\
                open_for = \"3h\"\nprotect = [\"tcp:22\"]\n\
                [[rule]]\nname = \"b\"\nsequence = [\"tcp:4\", \"udp:5\", \"tcp:6\"]\n\
                sequence_timeout = \"40s\"\nopen_for = \"1m\"\nprotect = [\"tcp:23\"]\n";
    let kernel = KernelConfig::try_from(&Config::parse(text).expect("valid")).expect("fits");
    let second = 1_000_000_000;
    assert_eq!(kernel.settings.knocking_horizon, horizon_span(40 * second));
    assert_eq!(
        kernel.settings.admitted_horizon,
        horizon_span(3 * 3600 * second)
    );
}

#[test]
fn the_failing_horizon_covers_the_longer_of_the_penalty_window_and_the_penalty() {
    let second = 1_000_000_000;
    for (penalty, longer) in [
        ("window = \"10m\"\nduration = \"1m\"", 600 * second),
        ("window = \"1m\"\nduration = \"2h\"", 7200 * second),
    ] {
        let rule = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"));
        let text = format!("[penalty]\n{penalty}\n{rule}");
        let kernel = KernelConfig::try_from(&Config::parse(&text).expect("valid")).expect("fits");
        assert_eq!(
            kernel.settings.failing_horizon,
            horizon_span(longer),
            "{penalty}"
        );
    }
}
