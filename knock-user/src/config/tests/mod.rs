//! The configuration's tests, by concern; the helpers here write the
//! files they parse.

use std::{collections::HashMap, time::Duration};

use knock_common::{
    CONCEAL_CLOSED, CONCEAL_DROP, IPPROTO_TCP, IPPROTO_UDP, Knock, PortRoles, horizon_span,
    ipv4_mapped, port_roles_index,
};

use super::*;

mod collisions;
mod file;
mod fleet;
mod kernel;
mod one_time;
mod rotating;
mod scope;
mod spa;

const EXAMPLE: &str = r#"# xknock.toml
interfaces = ["eth0"]            # `xknock run --iface IF` (repeatable) overrides
allow = ["192.0.2.0/24"]         # optional: always admitted to protected ports
deny  = ["198.51.100.7/32"]      # optional: never admitted, knocks ignored

[[rule]]
name = "ssh"
sequence = ["tcp:3721", "udp:4728", "tcp:6742"]
sequence_timeout = "10s"         # durations: "500ms", "10s", "5m", "1h"
open_for = "60s"
protect = ["tcp:22"]
"#;

fn error(text: &str) -> String {
    Config::parse(text)
        .expect_err("config must be refused")
        .to_string()
}

fn with_rule(rule_lines: &str) -> String {
    format!("[[rule]]\nname = \"ssh\"\n{rule_lines}")
}

const SEQUENCE: &str = "sequence = [\"tcp:3721\", \"udp:4728\", \"tcp:1234\"]\n";
const TIMES: &str = "sequence_timeout = \"10s\"\nopen_for = \"60s\"\n";

const SPA_KEYS: &str = "key_base64 = \"wqpO0bCb8v0WXmVOiK2LDsWbx84d7V5NzC4dgQlcCRM=\"\nhmac_key_base64 = \"Kxo4R01PrSUXAbpKKe7vuuDrh6OMLbiCHoSWxdfz3fsyHcIp/A2VYw8JMusAK9W5ZlAqBzEtx/grXJr5Rg/5Mw==\"\n";

fn with_spa(spa_lines: &str) -> String {
    format!("[[spa]]\nname = \"fwknop\"\n{spa_lines}")
}

/// A secret file with mode 600 in `dir`.
fn secret(dir: &Path, name: &str, secret: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
