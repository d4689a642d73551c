//! `[[spa]]` entries: their keys, their port, and what they may not share.

use super::*;

#[test]
fn an_spa_entry_takes_a_rule_index_and_its_udp_port() {
    let text = format!(
        "{}{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n{}listen = \"udp:62201\"\n{SPA_KEYS}open_for = \"30s\"\nprotect = [\"tcp:22\", \"tcp:443\"]\n",
        with_rule(""),
        with_spa("")
    );
    let config = Config::parse(&text).expect("valid");
    let spa = config.rules[1].spa().expect("an SPA entry");
    assert_eq!(spa.listen, 62201);
    drop(spa.keys());
    assert_eq!(spa.max_age, Duration::from_secs(120), "fwknop's default");
    assert!(!spa.require_source_address);
    assert!(config.rules[1].sequence().is_empty());
    assert!(
        !format!("{spa:?}").contains("wqpO"),
        "no key in Debug output"
    );
    let kernel = KernelConfig::try_from(&config).expect("fits");
    assert_eq!(kernel.rules.len(), 2);
    assert_eq!(kernel.rules[1].steps, 0, "no sequence: nothing knocks it");
    assert_eq!(kernel.settings.spa_datagrams_per_sec, 100);
    let roles: HashMap<u32, PortRoles> = kernel.port_roles.iter().copied().collect();
    let at = |proto, port| {
        roles
            .get(&port_roles_index(proto, port).expect("tcp/udp"))
            .copied()
    };
    assert_eq!(at(IPPROTO_UDP, 62201).map(|r| r.spa_rules), Some(0b10));
    assert_eq!(at(IPPROTO_TCP, 22).map(|r| r.protect_rules), Some(0b11));
    assert_eq!(at(IPPROTO_TCP, 443).map(|r| r.protect_rules), Some(0b10));

    // An SPA entry alone is a configuration; listen defaults to fwknop's port.
    let alone = Config::parse(&format!(
        "{}{SPA_KEYS}open_for = \"30s\"\nprotect = [\"tcp:22\"]\nmax_age = \"30s\"\nrequire_source_address = true\n",
        with_spa("")
    ))
    .expect("valid");
    let spa = alone.rules[0].spa().expect("an SPA entry");
    assert_eq!(
        (spa.listen, spa.max_age, spa.require_source_address),
        (62201, Duration::from_secs(30), true)
    );
}

#[test]
fn spa_entries_are_checked() {
    let spa = |lines: &str| {
        format!(
            "{}{lines}open_for = \"30s\"\nprotect = [\"tcp:22\"]\n",
            with_spa("")
        )
    };
    let tcp = error(&spa(&format!("listen = \"tcp:62201\"\n{SPA_KEYS}")));
    assert!(
        tcp.contains("listen") && tcp.contains("not a UDP port"),
        "{tcp}"
    );
    let not_b64 = error(&spa(
        "key_base64 = \"not base64!\"\nhmac_key_base64 = \"aGVsbG8=\"\n",
    ));
    assert!(
        not_b64.contains("key_base64") && not_b64.contains("not base64"),
        "{not_b64}"
    );
    let long = error(&spa(&format!(
        "key_base64 = \"{}\"\nhmac_key_base64 = \"aGVsbG8=\"\n",
        "QUFB".repeat(11)
    )));
    assert!(long.contains("fwknop takes 1 to 32"), "{long}");
    let same = error(&spa(
        "key_base64 = \"aGVsbG8=\"\nhmac_key_base64 = \"aGVsbG8\"\n",
    ));
    assert!(same.contains("are the same"), "{same}");
    let missing = error(&spa("key_base64 = \"aGVsbG8=\"\n"));
    assert!(missing.contains("hmac_key_base64"), "{missing}");

    let rule = |protect: &str| format!("{}{SEQUENCE}{TIMES}protect = [{protect}]\n", with_rule(""));
    let protected = error(&format!("{}{}", rule("\"udp:62201\""), spa(SPA_KEYS)));
    assert!(
        protected.contains("SPA port must not be a service port"),
        "{protected}"
    );
    let knock_step = error(&format!(
        "{}{}",
        rule("\"tcp:22\""),
        spa(&format!("listen = \"udp:4728\"\n{SPA_KEYS}"))
    ));
    assert!(
        knock_step.contains("knock step of rule `ssh`"),
        "{knock_step}"
    );
    let twice = error(&format!(
        "{}{}",
        rule("\"tcp:22\""),
        spa(SPA_KEYS).replace("fwknop", "ssh")
    ));
    assert!(twice.contains("defined twice"), "{twice}");
    let open_nothing = error(&format!(
        "{}{SPA_KEYS}open_for = \"30s\"\nprotect = []\n",
        with_spa("")
    ));
    assert!(open_nothing.contains("protects nothing"), "{open_nothing}");
}

#[test]
fn a_file_holding_spa_keys_that_others_can_read_is_warned_of() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("xknock.toml");
    let with_keys = with_spa(&format!(
        "{SPA_KEYS}open_for = \"30s\"\nprotect = [\"tcp:22\"]\n"
    ));
    let warned = |text: &str, mode: u32| {
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        read_config(&path)
            .expect("valid")
            .warnings
            .into_iter()
            .filter(|w| w.contains("holds SPA keys"))
            .collect::<Vec<_>>()
    };
    let said = warned(&with_keys, 0o644);
    assert!(
        said.len() == 1 && said[0].contains("mode 644") && said[0].contains("chmod 600"),
        "{said:?}"
    );
    assert_eq!(warned(&with_keys, 0o640).len(), 1, "the group reads it too");
    assert!(warned(&with_keys, 0o600).is_empty());
    let without_keys = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"));
    assert!(warned(&without_keys, 0o644).is_empty());
}
