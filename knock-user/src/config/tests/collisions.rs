//! What rules may not share: knock ports that are protected, sequences,
//! first steps.

use super::*;

#[test]
fn knock_port_that_is_protected_is_refused() {
    let text = format!(
        "{}\n[[rule]]\nname = \"vpn\"\nsequence = [\"udp:9000\", \"tcp:22\", \"udp:8000\"]\n{TIMES}protect = [\"udp:51820\"]\n",
        with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"))
    );
    let e = error(&text);
    assert!(
        e.contains("line 10")
            && e.contains("tcp:22 is a knock step and also protected by rule `ssh`"),
        "{e}"
    );
}

#[test]
fn colliding_rules_are_refused_or_warned() {
    let rule = |name: &str, sequence: &str, protect: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\nsequence = [{sequence}]\n{TIMES}protect = [\"{protect}\"]\n"
        )
    };
    let same = rule("a", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:22")
        + &rule("b", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:23");
    assert!(error(&same).contains("the same sequence as rule `a`"));
    let shared_start = rule("a", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:22")
        + &rule("b", "\"tcp:5000\", \"udp:6000\", \"tcp:4500\"", "tcp:23");
    let config = Config::parse(&shared_start).expect("a shared first step is allowed");
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("starts with tcp:5000 like rule `a`"))
    );
    let twice = rule("a", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:22")
        + &rule("a", "\"tcp:5001\", \"udp:3001\", \"tcp:4001\"", "tcp:23");
    assert!(error(&twice).contains("rule `a` is defined twice"));
}
