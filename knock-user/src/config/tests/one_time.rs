//! Rules with a `sequences_file`.

use super::*;

#[test]
fn a_one_time_rule_takes_the_first_unused_line_and_checks_them_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let otp = dir.path().join("ssh.otp");
    std::fs::write(
        &otp,
        "#7001,7002,7003\n8001:udp,8002,8003:udp\n9001,9002,9003\n",
    )
    .expect("write");
    let text = with_rule(&format!(
        "sequences_file = \"ssh.otp\"\n{TIMES}protect = [\"tcp:22\"]\n"
    ));
    let config = Config::parse_in(&text, dir.path()).expect("valid");
    let rule = &config.rules[0];
    assert_eq!(
        rule.sequence(),
        [
            PortSpec(Knock::udp(8001)),
            PortSpec(Knock::tcp(8002)),
            PortSpec(Knock::udp(8003))
        ]
    );
    assert_eq!(rule.one_time().map(|o| o.line), Some(2));
    assert_eq!(
        KernelConfig::try_from(&config).expect("fits").rules[0].once,
        1
    );
    // A bad later line is found now, not when its turn comes.
    std::fs::write(&otp, "7001,7002,7003\n8001,8001,8003\n").expect("write");
    let error = Config::parse_in(&text, dir.path())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("line 2: tcp:8001 appears twice"), "{error}");
    // Both forms at once, or neither, are refused.
    let both = with_rule(&format!(
        "{SEQUENCE}sequences_file = \"ssh.otp\"\n{TIMES}protect = [\"tcp:22\"]\n"
    ));
    assert!(
        Config::parse_in(&both, dir.path())
            .expect_err("refused")
            .to_string()
            .contains("one of `sequence`, `sequences_file` or `secret_file`")
    );
    // Every line used: the rule opens nothing, with a warning.
    std::fs::write(&otp, "#7001,7002,7003\n").expect("write");
    let config = Config::parse_in(&text, dir.path()).expect("valid");
    assert!(config.rules[0].sequence().is_empty());
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("no unused sequence"))
    );
}
