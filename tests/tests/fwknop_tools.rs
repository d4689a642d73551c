//! The harness around the real fwknop 2.6.10 client and server works: the
//! client's packets, and fwknopd's verdicts on them, are what fwknop does.
//! xknock's SPA verdicts are checked against these.

use std::time::{SystemTime, UNIX_EPOCH};

use lab::{
    CLIENT_V4, Lab, SERVER_V4,
    fwknop::{
        FwknopKeys, Fwknopd, FwknopdGrant, FwknopdOptions, FwknopdVerdict, client_packet,
        client_send,
    },
    require_program, require_root,
};

/// A lab, fresh keys, and fwknopd on the lab's server with `options`
/// (made from the keys).
fn setup(options: impl FnOnce(&mut FwknopdOptions)) -> (Lab, FwknopKeys, Fwknopd) {
    require_root();
    require_program("fwknop", "fwknop-client");
    require_program("fwknopd", "fwknop-server");
    let lab = Lab::new();
    let keys = FwknopKeys::generate();
    let mut opts = FwknopdOptions::new(&keys);
    options(&mut opts);
    let fwknopd = Fwknopd::start(&lab.server, SERVER_V4, opts);
    (lab, keys, fwknopd)
}

/// A packet from the client asking for `access` for its own address, with
/// more client options in `extra`.
fn packet(keys: &FwknopKeys, access: &str, extra: &[&str]) -> String {
    let mut args = vec!["-A", access, "-a", CLIENT_V4, "-D", SERVER_V4];
    args.extend_from_slice(extra);
    client_packet(keys, &args)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// `grants` is one rule for `access` from `source`, expiring `timeout`
/// seconds from now (give or take the time the test took).
fn assert_grant(grants: &[FwknopdGrant], source: &str, access: &str, timeout: u64) {
    let [grant] = grants else {
        panic!("expected one grant, got {grants:?}")
    };
    assert_eq!(
        (grant.source.as_str(), grant.access.as_str()),
        (source, access)
    );
    let left = grant.expires_at.saturating_sub(now());
    assert!(
        left <= timeout && left + 3 >= timeout,
        "grant for {timeout} s expires in {left} s: {grant:?}"
    );
}

#[test]
fn client_packet_is_one_line_of_base64_and_fwknopd_accepts_it_for_fw_access_timeout() {
    let (lab, keys, mut fwknopd) = setup(|o| o.fw_access_timeout = 45);
    let payload = packet(&keys, "tcp/22", &[]);
    assert!(
        payload.len() > 100
            && payload
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
        "not an SPA payload: {payload:?}"
    );
    assert_ne!(payload, packet(&keys, "tcp/22", &[]), "packets must differ");

    assert_eq!(
        fwknopd.judge(payload.as_bytes(), &lab.client),
        FwknopdVerdict::Accepted,
        "{:#?}",
        fwknopd.last_lines()
    );
    assert_grant(&fwknopd.last_grants(), CLIENT_V4, "tcp/22", 45);

    // What -B writes, newline and all, is not a packet to fwknopd.
    let with_newline = format!("{}\n", packet(&keys, "tcp/22", &[]));
    assert_eq!(
        fwknopd.judge(with_newline.as_bytes(), &lab.client),
        FwknopdVerdict::NotSpa
    );
}

#[test]
fn the_same_payload_again_is_a_replay_but_a_new_packet_is_not() {
    let (lab, keys, mut fwknopd) = setup(|_| {});
    let payload = packet(&keys, "tcp/22", &[]);
    assert_eq!(
        fwknopd.judge(payload.as_bytes(), &lab.client),
        FwknopdVerdict::Accepted
    );
    assert_eq!(
        fwknopd.judge(payload.as_bytes(), &lab.client),
        FwknopdVerdict::Replay,
        "{:#?}",
        fwknopd.last_lines()
    );
    assert!(fwknopd.last_grants().is_empty());
    let fresh = packet(&keys, "tcp/22", &[]);
    assert_eq!(
        fwknopd.judge(fresh.as_bytes(), &lab.client),
        FwknopdVerdict::Accepted
    );
    // An authentic packet refused for its age is in the cache too.
    let old = packet(&keys, "tcp/22", &["--time-offset-minus", "300s"]);
    assert_eq!(
        fwknopd.judge(old.as_bytes(), &lab.client),
        FwknopdVerdict::TooOld
    );
    assert_eq!(
        fwknopd.judge(old.as_bytes(), &lab.client),
        FwknopdVerdict::Replay
    );
}

#[test]
fn fwknopd_test_mode_never_sees_a_replay() {
    let (lab, keys, mut fwknopd) = setup(|o| o.test_mode = true);
    let payload = packet(&keys, "tcp/22", &[]);
    for _ in 0..2 {
        assert_eq!(
            fwknopd.judge(payload.as_bytes(), &lab.client),
            FwknopdVerdict::Accepted,
            "{:#?}",
            fwknopd.last_lines()
        );
        assert!(fwknopd.last_grants().is_empty());
    }
}

#[test]
fn a_flipped_byte_or_other_keys_fail_the_hmac() {
    let (lab, keys, mut fwknopd) = setup(|_| {});
    let mut flipped = packet(&keys, "tcp/22", &[]).into_bytes();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        fwknopd.judge(&flipped, &lab.client),
        FwknopdVerdict::BadHmac,
        "{:#?}",
        fwknopd.last_lines()
    );

    let other = FwknopKeys::generate();
    assert_ne!(other, keys);
    assert_eq!(
        fwknopd.judge(packet(&other, "tcp/22", &[]).as_bytes(), &lab.client),
        FwknopdVerdict::BadHmac
    );
    // No HMAC where the stanza has an HMAC key.
    let no_hmac = FwknopKeys {
        key_base64: keys.key_base64.clone(),
        hmac_key_base64: String::new(),
    };
    assert_eq!(
        fwknopd.judge(packet(&no_hmac, "tcp/22", &[]).as_bytes(), &lab.client),
        FwknopdVerdict::BadHmac
    );
    // The right HMAC key with the wrong encryption key.
    let wrong_key = FwknopKeys {
        key_base64: other.key_base64,
        hmac_key_base64: keys.hmac_key_base64.clone(),
    };
    assert_eq!(
        fwknopd.judge(packet(&wrong_key, "tcp/22", &[]).as_bytes(), &lab.client),
        FwknopdVerdict::DecryptionFailed
    );
    // And after all that, the right keys still work.
    assert_eq!(
        fwknopd.judge(packet(&keys, "tcp/22", &[]).as_bytes(), &lab.client),
        FwknopdVerdict::Accepted
    );
}

#[test]
fn packets_older_or_newer_than_max_spa_packet_age_are_too_old() {
    let (lab, keys, mut fwknopd) = setup(|o| o.max_spa_packet_age = 120);
    for (offset, expected) in [
        (["--time-offset-minus", "300s"], FwknopdVerdict::TooOld),
        (["--time-offset-plus", "300s"], FwknopdVerdict::TooOld),
        (["--time-offset-minus", "60s"], FwknopdVerdict::Accepted),
    ] {
        let payload = packet(&keys, "tcp/22", &offset);
        assert_eq!(
            fwknopd.judge(payload.as_bytes(), &lab.client),
            expected,
            "{offset:?}: {:#?}",
            fwknopd.last_lines()
        );
    }
}

#[test]
fn source_0_0_0_0_is_refused_only_where_a_source_address_is_required() {
    let (lab, keys, mut required) = setup(|o| o.require_source_address = true);
    let anywhere = client_packet(&keys, &["-A", "tcp/22", "-s", "-D", SERVER_V4]);
    assert_eq!(
        required.judge(anywhere.as_bytes(), &lab.client),
        FwknopdVerdict::SourceRequired,
        "{:#?}",
        required.last_lines()
    );
    drop(required);

    let mut lenient = Fwknopd::start(&lab.server, SERVER_V4, {
        let mut o = FwknopdOptions::new(&keys);
        o.require_source_address = false;
        o
    });
    assert_eq!(
        lenient.judge(anywhere.as_bytes(), &lab.client),
        FwknopdVerdict::Accepted,
        "{:#?}",
        lenient.last_lines()
    );
    // The packet's source address is let in.
    assert_grant(&lenient.last_grants(), CLIENT_V4, "tcp/22", 30);
}

#[test]
fn ports_not_in_open_ports_are_not_allowed_and_client_timeouts_are_capped() {
    let (lab, keys, mut fwknopd) = setup(|o| {
        o.open_ports = "tcp/22, udp/53".to_owned();
        o.extra_access.push("MAX_FW_TIMEOUT 60".to_owned());
    });
    assert_eq!(
        fwknopd.judge(packet(&keys, "tcp/23", &[]).as_bytes(), &lab.client),
        FwknopdVerdict::NotAllowed,
        "{:#?}",
        fwknopd.last_lines()
    );
    assert_eq!(
        fwknopd.judge(packet(&keys, "tcp/22,tcp/23", &[]).as_bytes(), &lab.client),
        FwknopdVerdict::NotAllowed
    );
    assert_eq!(
        fwknopd.judge(
            packet(&keys, "udp/53", &["-f", "20"]).as_bytes(),
            &lab.client
        ),
        FwknopdVerdict::Accepted
    );
    assert_grant(&fwknopd.last_grants(), CLIENT_V4, "udp/53", 20);
    assert_eq!(
        fwknopd.judge(
            packet(&keys, "tcp/22", &["-f", "9999"]).as_bytes(),
            &lab.client
        ),
        FwknopdVerdict::Accepted
    );
    assert_grant(&fwknopd.last_grants(), CLIENT_V4, "tcp/22", 60);
}

#[test]
fn the_client_sends_for_real_from_its_namespace() {
    let (lab, keys, mut fwknopd) = setup(|o| o.port = 4000);
    client_send(
        &lab.client,
        &keys,
        &[
            "-A", "tcp/22", "-a", CLIENT_V4, "-D", SERVER_V4, "-p", "4000",
        ],
    );
    assert_eq!(
        fwknopd.next_verdict(&lab.client),
        FwknopdVerdict::Accepted,
        "{:#?}",
        fwknopd.last_lines()
    );
    assert!(
        fwknopd.last_lines()[0].ends_with(&format!("from: {CLIENT_V4}")),
        "{:#?}",
        fwknopd.last_lines()
    );
    assert_grant(&fwknopd.last_grants(), CLIENT_V4, "tcp/22", 30);
}
