//! `[fleet]`: etcd's endpoints, the prefix and node, TLS files, and the
//! fleet's own ports.

use super::*;
use crate::config::fleet::{DEFAULT_PREFIX, OfflineSpend};

fn with_fleet(fleet_lines: &str) -> String {
    format!(
        "{}{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n[fleet]\n{fleet_lines}",
        with_rule("")
    )
}

const ETCD: &str = "etcd = [\"http://10.0.0.5:2379\", \"http://10.0.0.6:2379\"]\n";

#[test]
fn a_fleet_needs_etcd_alone_and_defaults_the_rest() {
    let config = Config::parse(&with_fleet(ETCD)).expect("valid");
    let fleet = config.fleet.expect("a fleet");
    assert_eq!(
        fleet.endpoints,
        ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]
    );
    assert_eq!(fleet.prefix, DEFAULT_PREFIX);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    assert_eq!(fleet.node, hostname.trim(), "the host name by default");
    assert_eq!(fleet.offline_spend, OfflineSpend::Refuse);
    assert!(fleet.tls.is_none());
    assert!(Config::parse(EXAMPLE).expect("valid").fleet.is_none());

    let written = Config::parse(&with_fleet(&format!(
        "{ETCD}prefix = \"/xknock/prod\"\nnode = \"bastion-1\"\noffline_spend = \"local\"\n"
    )))
    .expect("valid")
    .fleet
    .expect("a fleet");
    assert_eq!(
        (written.prefix.as_str(), written.node.as_str()),
        ("/xknock/prod", "bastion-1")
    );
    assert_eq!(written.offline_spend, OfflineSpend::Local);
}

#[test]
fn fleet_problems_name_their_line_and_key() {
    let cases = [
        ("etcd = []\n", "line 8: fleet: etcd: no endpoint"),
        (
            "etcd = [\"10.0.0.5:2379\"]\n",
            "line 8: fleet: etcd: `10.0.0.5:2379` is not",
        ),
        (
            "etcd = [\"http://a:2379\", \"http://a:2379\"]\n",
            "listed twice",
        ),
        (
            "etcd = [\"http://a:2379\", \"https://b:2379\"]\n",
            "mixes http:// and https://",
        ),
        (
            &format!("{ETCD}prefix = \"xknock/\"\n"),
            "line 9: fleet: prefix: `xknock/` is not a key prefix",
        ),
        (
            &format!("{ETCD}node = \"a b\"\n"),
            "line 9: fleet: node: `a b` is not a node name",
        ),
        (
            &format!("{ETCD}offline_spend = \"maybe\"\n"),
            "unknown variant `maybe`",
        ),
        (
            &format!("{ETCD}ca_file = \"ca.pem\"\n"),
            "line 9: fleet: ca_file: TLS files go with https://",
        ),
        (
            "etcd = [\"https://a:2379\"]\n",
            "line 8: fleet: ca_file: https:// endpoints need `ca_file`",
        ),
        (&format!("{ETCD}peers = 3\n"), "unknown field `peers`"),
    ];
    for (fleet, expected) in cases {
        let message = error(&with_fleet(fleet));
        assert!(message.contains(expected), "{fleet}: {message}");
    }
}

#[test]
fn tls_files_are_read_beside_the_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = |name: &str, what: &str| {
        std::fs::write(
            dir.path().join(name),
            format!("-----BEGIN {what}-----\nMIIB\n-----END {what}-----\n"),
        )
        .expect("write");
    };
    pem("ca.pem", "CERTIFICATE");
    pem("client.pem", "CERTIFICATE");
    pem("client.key", "PRIVATE KEY");
    std::fs::write(dir.path().join("empty.pem"), "").expect("write");
    let https = "etcd = [\"https://etcd.example:2379\"]\nca_file = \"ca.pem\"\n";
    let parse = |extra: &str| Config::parse_in(&with_fleet(&format!("{https}{extra}")), dir.path());

    let ca_only = parse("").expect("valid").fleet.expect("a fleet");
    let tls = ca_only.tls.expect("TLS");
    assert!(tls.ca_pem.contains("BEGIN CERTIFICATE") && tls.identity.is_none());

    let mutual = parse("cert_file = \"client.pem\"\nkey_file = \"client.key\"\n")
        .expect("valid")
        .fleet
        .expect("a fleet");
    let (cert, key) = mutual
        .tls
        .clone()
        .and_then(|t| t.identity)
        .expect("an identity");
    assert!(cert.contains("CERTIFICATE") && key.contains("PRIVATE KEY"));
    assert!(
        !format!("{mutual:?}").contains("MIIB"),
        "no key or certificate in Debug output"
    );

    for (extra, expected) in [
        (
            "cert_file = \"client.pem\"\n",
            "line 10: fleet: key_file: `cert_file` and `key_file` go together",
        ),
        (
            "key_file = \"client.key\"\n",
            "line 10: fleet: cert_file: `cert_file` and `key_file` go together",
        ),
        (
            "cert_file = \"missing.pem\"\nkey_file = \"client.key\"\n",
            "line 10: fleet: cert_file: cannot read",
        ),
        (
            "cert_file = \"empty.pem\"\nkey_file = \"client.key\"\n",
            "holds no PEM block",
        ),
    ] {
        let message = parse(extra).expect_err("refused").to_string();
        assert!(message.contains(expected), "{extra}: {message}");
    }
}

#[test]
fn a_knock_on_etcds_port_is_refused_but_protecting_it_is_the_operators_choice() {
    let knock_on_etcd = format!(
        "[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:3721\", \"tcp:2379\", \"udp:9\"]\n{TIMES}protect = [\"tcp:22\"]\n[fleet]\n{ETCD}"
    );
    let message = error(&knock_on_etcd);
    assert!(
        message.contains("line 3: rule `ssh`: sequence: tcp:2379 is a port of etcd"),
        "{message}"
    );
    // UDP 2379 is not etcd's.
    let udp = knock_on_etcd.replace("tcp:2379", "udp:2379");
    assert!(Config::parse(&udp).is_ok());
    let protected = format!(
        "{}{SEQUENCE}{TIMES}protect = [\"tcp:2379\"]\n[fleet]\n{ETCD}",
        with_rule("")
    );
    assert!(Config::parse(&protected).is_ok());
}
