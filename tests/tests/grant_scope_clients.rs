//! Grant scopes with real clients: a client behind carrier NAT knocks from
//! one address and opens SSH (OpenSSH) from another of the same prefix,
//! IPv4 and IPv6 alike, when the rule has a `grant_scope`, and is refused
//! without one; the real fwknop client's request grants its `[[spa]]`
//! entry's scope; `xknock grant`, `status`, `revoke` and the events speak in
//! prefixes.

use lab::{
    CLIENT_V4, CLIENT_V6, Lab, SERVER_V4, SERVER_V6, Sshd, Xknock, article_config, article_knock,
    fwknop::{FwknopKeys, client_send},
    require_program, ssh_refused,
};

/// The client's second addresses: the same /24 and /64 as its first.
const OTHER_V4: &str = "198.18.0.77";
const OTHER_V6: &str = "fd18::77";
const SCOPE: &str = "grant_scope = { ipv4 = 24, ipv6 = 64 }\n";

/// A lab whose client also holds `OTHER_V4` and `OTHER_V6`.
fn lab() -> Lab {
    let lab = Lab::new();
    let iface = lab.client_if.clone();
    lab.client
        .ip(&["addr", "add", &format!("{OTHER_V4}/24"), "dev", &iface]);
    lab.client.ip(&[
        "addr",
        "add",
        &format!("{OTHER_V6}/64"),
        "dev",
        &iface,
        "nodad",
    ]);
    lab
}

/// Whether `ssh -b bind` to `server` runs a command.
fn ssh_in(sshd: &Sshd, lab: &Lab, bind: &str, server: &str) -> bool {
    let out = sshd
        .ssh_from(lab, Some(bind), server, "echo in")
        .output()
        .expect("ssh");
    if out.status.success() {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "in");
        return true;
    }
    assert!(ssh_refused(&out), "refused as a closed port: {out:?}");
    false
}

#[test]
fn a_carrier_nat_client_knocks_from_one_address_and_connects_from_another() {
    let lab = lab();
    let sshd = Sshd::start(&lab);
    let config = article_config("60s", "\"tcp:22\"") + SCOPE;
    let xknock = Xknock::start(&lab, &config, &[], false);
    assert!(
        !ssh_in(&sshd, &lab, OTHER_V4, SERVER_V4),
        "before the knock"
    );

    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[
        ("event", "grant"),
        ("source", CLIENT_V4),
        ("granted", "198.18.0.0/24"),
    ]);
    assert!(
        ssh_in(&sshd, &lab, OTHER_V4, SERVER_V4),
        "another address of the /24"
    );
    assert!(
        ssh_in(&sshd, &lab, CLIENT_V4, SERVER_V4),
        "the knocking address"
    );
    // IPv4's grant is no IPv6 one.
    assert!(!ssh_in(&sshd, &lab, OTHER_V6, SERVER_V6));

    // Another address of the knocking address's /64 (the client's kernel
    // picks which of its two the knock leaves from, as with privacy
    // addresses).
    article_knock(&lab, SERVER_V6);
    let grant = xknock.expect_event(&[("event", "grant"), ("granted", "fd18::/64")]);
    let other = if grant["source"] == CLIENT_V6 {
        OTHER_V6
    } else {
        assert_eq!(grant["source"], OTHER_V6);
        CLIENT_V6
    };
    assert!(ssh_in(&sshd, &lab, other, SERVER_V6));

    let status = xknock
        .filter()
        .xknock(&lab, &["status", "--config", xknock.filter().arg()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("198.18.0.0/24 rule=ssh") && text.contains("fd18::/64 rule=ssh"),
        "{text}"
    );
    assert!(
        text.contains("to the knocker's IPv4 /24 or IPv6 /64"),
        "{text}"
    );
}

#[test]
fn without_a_scope_the_other_address_is_refused() {
    let lab = lab();
    let sshd = Sshd::start(&lab);
    let xknock = Xknock::start(&lab, &article_config("60s", "\"tcp:22\""), &[], false);
    article_knock(&lab, SERVER_V4);
    let grant = xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert!(grant.get("granted").is_none(), "{grant}");
    assert!(ssh_in(&sshd, &lab, CLIENT_V4, SERVER_V4));
    assert!(!ssh_in(&sshd, &lab, OTHER_V4, SERVER_V4));
}

#[test]
fn grant_status_and_revoke_take_prefixes() {
    let lab = lab();
    let sshd = Sshd::start(&lab);
    let config = article_config("60s", "\"tcp:22\"") + SCOPE;
    let xknock = Xknock::start(&lab, &config, &[], false);
    let filter = xknock.filter();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", filter.arg()]);
        filter.xknock(&lab, &all)
    };

    // A prefix of another length than the rule's scope is refused.
    let wrong = cli(&["grant", "198.18.0.0/16", "--rule", "ssh"]);
    assert!(!wrong.status.success(), "{wrong:?}");
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("grants /24 prefixes"), "{said}");

    let granted = cli(&["grant", "198.18.0.0/24", "--rule", "ssh", "--for", "60s"]);
    assert!(granted.status.success(), "{granted:?}");
    let said = String::from_utf8_lossy(&granted.stderr);
    assert!(said.contains("granted 198.18.0.0/24 rule ssh"), "{said}");
    assert!(ssh_in(&sshd, &lab, OTHER_V4, SERVER_V4));

    let status = cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let grants = status["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 1, "{status}");
    assert_eq!(grants[0]["source"], "198.18.0.0");
    assert_eq!(grants[0]["prefix_len"], 24);
    assert_eq!(status["rules"][0]["grant_scope"]["ipv4"], 24);

    // Revoking one address of the prefix ends the prefix's grant.
    let revoked = cli(&["revoke", OTHER_V4, "--flows"]);
    assert!(revoked.status.success(), "{revoked:?}");
    let said = String::from_utf8_lossy(&revoked.stderr);
    assert!(said.contains("revoked 1 grant(s) of 198.18.0.77"), "{said}");
    assert!(!ssh_in(&sshd, &lab, CLIENT_V4, SERVER_V4));

    // A bare address grants its prefix, as a knock from it would.
    let granted = cli(&["grant", CLIENT_V4, "--rule", "ssh"]);
    let said = String::from_utf8_lossy(&granted.stderr);
    assert!(said.contains("granted 198.18.0.0/24"), "{said}");
    let revoked = cli(&["revoke", "198.18.0.0/24"]);
    let said = String::from_utf8_lossy(&revoked.stderr);
    assert!(
        said.contains("revoked 1 grant(s) of 198.18.0.0/24"),
        "{said}"
    );
}

#[test]
fn an_spa_request_grants_the_prefix_of_its_entry_scope() {
    require_program("fwknop", "fwknop-client");
    let lab = lab();
    let sshd = Sshd::start(&lab);
    let keys = FwknopKeys::generate();
    let config = format!(
        "[[spa]]\nname = \"fwknop\"\nkey_base64 = \"{}\"\nhmac_key_base64 = \"{}\"\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n{SCOPE}",
        keys.key_base64, keys.hmac_key_base64
    );
    let xknock = Xknock::start(&lab, &config, &[], false);
    assert!(!ssh_in(&sshd, &lab, OTHER_V4, SERVER_V4));
    // The real fwknop client, asking for its source address (-s).
    client_send(&lab.client, &keys, &["-A", "tcp/22", "-D", SERVER_V4, "-s"]);
    xknock.expect_event(&[
        ("event", "spa_grant"),
        ("source", CLIENT_V4),
        ("granted", "198.18.0.0/24"),
    ]);
    assert!(ssh_in(&sshd, &lab, OTHER_V4, SERVER_V4));
}
