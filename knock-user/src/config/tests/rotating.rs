//! Rules with a `secret_file`.

use super::*;

#[test]
fn a_rotating_rule_takes_two_indexes_with_this_and_the_last_windows_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    secret(dir.path(), "ssh.key", KEY_A);
    let text = format!(
        "{}{TIMES}protect = [\"tcp:22\"]\n{}secret_file = \"ssh.key\"\nrotate = \"30s\"\nsteps = 5\n{TIMES}protect = [\"tcp:2222\"]\n",
        with_rule(SEQUENCE),
        "[[rule]]\nname = \"rot\"\n"
    );
    let config = Config::parse_in(&text, dir.path()).expect("valid");
    assert!(
        config.warnings.iter().all(|w| !w.contains("ssh.key")),
        "{:?}",
        config.warnings
    );
    let rule = &config.rules[1];
    let rotating = rule.rotating().expect("rotating");
    assert_eq!(
        (rotating.steps, rotating.rotate),
        (5, Duration::from_secs(30))
    );
    assert_eq!(rule.parts(), 2);
    assert_eq!(config.slots_in_order(), [vec![0], vec![1, 2]]);
    // 1000 * 30s + 1s: window 1000 (even: part 0), and 999 (part 1).
    let now = std::time::UNIX_EPOCH + Duration::from_secs(30_001);
    let kernel = KernelConfig::placed(&config, &config.slots_in_order(), now).expect("fits");
    let steps = |index: usize| -> Vec<Knock> {
        let r = &kernel.rules[index];
        r.sequence[..r.steps as usize].to_vec()
    };
    let window = |w| -> Vec<Knock> {
        rotating
            .sequence(w)
            .expect("derives")
            .iter()
            .map(|s| s.0)
            .collect()
    };
    assert_eq!(steps(1), window(1000));
    assert_eq!(steps(2), window(999));
    assert_eq!(
        rule.sequence_at(now).expect("derives"),
        rotating.sequence(1000).expect("derives")
    );
    assert!(
        kernel.rules[1].once == 1 && kernel.rules[2].once == 1,
        "each opens once"
    );
    assert_eq!(kernel.rules[0].once, 0);
    // Both parts guard the rule's port; the knock ports are the steps'.
    let roles = |spec: &str| {
        let spec: PortSpec = spec.parse().expect("spec");
        let index = port_roles_index(spec.0.proto, spec.0.port).expect("index");
        kernel
            .port_roles
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, r)| *r)
    };
    assert_eq!(roles("tcp:2222").expect("guarded").protect_rules, 0b110);
    let first = PortSpec(window(999)[0]).to_string();
    assert_ne!(roles(&first).expect("a knock port").knock_rules & 0b100, 0);
    // A window later, 1001 (odd) replaces 999 and 1000 stays where it was.
    let later = now + Duration::from_secs(30);
    let next = KernelConfig::placed(&config, &config.slots_in_order(), later).expect("fits");
    assert_eq!(next.rules[1], kernel.rules[1]);
    assert_ne!(next.rules[2].sequence_tag, kernel.rules[2].sequence_tag);
    assert_eq!(
        config.next_rotation(now),
        Some(std::time::UNIX_EPOCH + Duration::from_secs(30_030))
    );
    // Never a protected port, in any window.
    for w in 0..2000 {
        assert!(
            !rotating
                .sequence(w)
                .expect("derives")
                .contains(&PortSpec(Knock::tcp(2222)))
        );
    }
}

#[test]
fn rotating_rules_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    secret(dir.path(), "a.key", KEY_A);
    secret(dir.path(), "a-copy.key", KEY_A);
    secret(dir.path(), "b.key", KEY_B);
    std::fs::write(dir.path().join("short.key"), "c2hvcnQ=\n").expect("write");
    let rule = |name: &str, keys: &str| {
        format!("[[rule]]\nname = \"{name}\"\n{keys}{TIMES}protect = [\"tcp:22\"]\n")
    };
    let refused = |text: &str| {
        Config::parse_in(text, dir.path())
            .expect_err("refused")
            .to_string()
    };
    let e = refused(&rule("r", "secret_file = \"a.key\"\nsteps = 1\n"));
    assert!(e.contains("steps") && e.contains("outside 2..=16"), "{e}");
    let e = refused(&rule("r", "secret_file = \"a.key\"\nrotate = \"1s\"\n"));
    assert!(e.contains("rotate") && e.contains("at least 2s"), "{e}");
    let e = refused(&rule("r", "secret_file = \"short.key\"\n"));
    assert!(e.contains("too short"), "{e}");
    let e = refused(&rule("r", "secret_file = \"missing.key\"\n"));
    assert!(e.contains("missing.key"), "{e}");
    let e = refused(&rule("r", &format!("{SEQUENCE}rotate = \"30s\"\n")));
    assert!(e.contains("rotate") && e.contains("secret_file"), "{e}");
    let e = refused(&rule(
        "r",
        "secret_file = \"a.key\"\nport_range = \"5000-5010\"\n",
    ));
    assert!(
        e.contains("port_range 5000-5010") && e.contains("widen"),
        "{e}"
    );
    let e = refused(&format!(
        "{}{}",
        rule("r", "secret_file = \"a.key\"\n"),
        rule("s", "secret_file = \"a-copy.key\"\n")
    ));
    assert!(e.contains("the same secret as rule `r`"), "{e}");
    let two = format!(
        "{}{}",
        rule("r", "secret_file = \"a.key\"\n"),
        rule(
            "s",
            "secret_file = \"b.key\"\nport_range = \"40000-41000\"\n"
        )
    );
    let config = Config::parse_in(&two, dir.path()).expect("valid");
    let s = config.rules[1].rotating().expect("rotating");
    assert_eq!(
        config.rules[0].rotating().expect("rotating").rotate,
        Duration::from_secs(30)
    );
    assert!(
        s.sequence(7)
            .expect("derives")
            .iter()
            .all(|p| (40000..=41000).contains(&p.0.port))
    );
    // A rotating rule takes two of the 16 indexes.
    let keys: Vec<String> = (0..9)
        .map(|i| {
            let name = format!("k{i}.key");
            secret(
                dir.path(),
                &name,
                &crate::config::rotating::keygen().expect("random"),
            );
            rule(&format!("r{i}"), &format!("secret_file = \"{name}\"\n"))
        })
        .collect();
    let e = refused(&keys.concat());
    assert!(e.contains("18 rule indexes"), "{e}");
    Config::parse_in(&keys[..8].concat(), dir.path()).expect("16 indexes fit");
    // A secret others can read is a warning.
    std::fs::write(dir.path().join("open.key"), format!("{KEY_B}\n")).expect("write");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.path().join("open.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let config =
        Config::parse_in(&rule("r", "secret_file = \"open.key\"\n"), dir.path()).expect("valid");
    assert!(
        config.warnings.iter().any(|w| w.contains("chmod 600")),
        "{:?}",
        config.warnings
    );
}
