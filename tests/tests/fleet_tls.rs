//! The fleet over TLS: an etcd member that serves only https and asks for
//! client certificates, and xknock's `[fleet]` with `ca_file`, `cert_file`
//! and `key_file`. The certificates are made for the test with openssl.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lab::{Lab, SERVER_V4, Xknock, article_config, article_knock, require_program, require_root};

/// etcd's client URL inside the server namespace.
const ENDPOINT: &str = "https://127.0.0.1:2379";

/// Runs openssl with `args` in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority `NAME.pem`/`NAME.key` in `dir`.
fn authority(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A certificate `NAME.pem`/`NAME.key` signed by `ca.pem`, with the
/// extensions in `ext`.
fn signed(dir: &Path, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// One etcd member in the lab's server namespace that serves clients over
/// TLS only and asks them for a certificate; killed when dropped.
struct TlsEtcd(Child);

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }
}

impl TlsEtcd {
    fn start(lab: &Lab, dir: &Path) -> TlsEtcd {
        let child = lab
            .server
            .command("etcd")
            .current_dir(dir)
            .args([
                "--name",
                "tls",
                "--data-dir",
                "data",
                "--listen-client-urls",
                ENDPOINT,
                "--advertise-client-urls",
                ENDPOINT,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "tls=http://127.0.0.1:2380",
                "--cert-file",
                "server.pem",
                "--key-file",
                "server.key",
                "--trusted-ca-file",
                "ca.pem",
                "--client-cert-auth",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let etcd = TlsEtcd(child);
        let start = Instant::now();
        while !etcdctl(lab, dir, &["endpoint", "health"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd never became healthy"
            );
            thread::sleep(Duration::from_millis(200));
        }
        etcd
    }
}

/// etcdctl with the test's client certificate, in the server namespace.
fn etcdctl(lab: &Lab, dir: &Path, args: &[&str]) -> std::process::Output {
    lab.server
        .command("etcdctl")
        .current_dir(dir)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            ENDPOINT,
            "--cacert",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
            "--dial-timeout=1s",
            "--command-timeout=3s",
        ])
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// The article's rule with a `[fleet]` on the TLS member, its files named
/// as given (absolute paths: the configuration lives elsewhere).
fn fleet_config(dir: &Path, ca: &str, identity: bool) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    let mut text = format!(
        "{}[fleet]\netcd = [\"{ENDPOINT}\"]\nprefix = \"/xknock/tls\"\nnode = \"a\"\nca_file = \"{}\"\n",
        article_config("60s", "\"tcp:22\""),
        file(ca)
    );
    if identity {
        text += &format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            file("client.pem"),
            file("client.key")
        );
    }
    text
}

#[test]
fn a_fleet_follows_etcd_over_tls_with_a_client_certificate_and_nothing_else() {
    require_root();
    require_program("etcd", "etcd-server");
    require_program("openssl", "openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path();
    authority(certs, "ca");
    signed(
        certs,
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed(certs, "client", "extendedKeyUsage=clientAuth\n");
    // Another authority, which signed nothing etcd presents.
    let other = tempfile::tempdir().expect("tempdir");
    authority(other.path(), "ca");
    std::fs::copy(other.path().join("ca.pem"), certs.join("other-ca.pem")).expect("copy");

    let lab = Lab::new();
    let _etcd = TlsEtcd::start(&lab, certs);
    let xknock = Xknock::start(&lab, &fleet_config(certs, "ca.pem", true), &[], false);
    xknock
        .wait_event(
            &[("event", "fleet_online"), ("endpoint", ENDPOINT)],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("never online over TLS: {:?}", xknock.log()));

    // A knock is published through the TLS connection.
    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant"), ("rule", "ssh")]);
    let start = Instant::now();
    let key = "/xknock/tls/grants/198.18.0.2/ssh";
    loop {
        let got = etcdctl(&lab, certs, &["get", key, "--print-value-only"]);
        let value = String::from_utf8_lossy(&got.stdout);
        if value.contains("\"node\":\"a\"") && value.contains("\"via\":\"knock\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not published: {value}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // status reads the fleet's hosts the same way.
    let status = |config: &str| -> serde_json::Value {
        // The running filter's pins, with `config`'s fleet.
        let path = certs.join("status.toml");
        let pin_dir = xknock.filter().pin_dir.display().to_string();
        std::fs::write(&path, format!("pin_dir = \"{pin_dir}\"\n{config}")).expect("write");
        let out = xknock.filter().xknock(
            &lab,
            &["status", "--json", "--config", &path.display().to_string()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    };
    let trusted = status(&fleet_config(certs, "ca.pem", true));
    assert_eq!(trusted["fleet"]["hosts"][0]["node"], "a", "{trusted}");
    assert!(trusted["fleet"].get("error").is_none(), "{trusted}");
    // Without the client certificate etcd refuses; with a CA that did not
    // sign etcd's certificate xknock refuses.
    for (ca, identity) in [("ca.pem", false), ("other-ca.pem", true)] {
        let refused = status(&fleet_config(certs, ca, identity));
        assert!(
            refused["fleet"]["error"].is_string()
                && refused["fleet"]["hosts"] == serde_json::json!([]),
            "{ca} {identity}: {refused}"
        );
    }
}
