//! The demo (`cargo xtask demo` runs it): a real sshd behind xknock on a veth
//! pair between two network namespaces. ssh is refused as at a port where
//! nothing listens, `xknock knock` opens it, the grant expires and the
//! refusal returns; the event stream is
//! shown throughout. The xknock binary is $XKNOCK_BIN, else the one built next
//! to this one.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the demo narrates on stdout: printing is its job"
)]

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
use lab::{Lab, SERVER_V4, Sshd, Xknock, ssh_refused};

const OPEN_FOR_SECS: u64 = 8;

fn say(text: &str) {
    println!("\n==> {text}");
}

fn ssh(sshd: &Sshd, lab: &Lab) -> anyhow::Result<std::process::Output> {
    let output = sshd
        .ssh(
            lab,
            SERVER_V4,
            "echo \"hello from $(hostname) behind xknock\"",
        )
        .output()
        .context("running ssh")?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    print!("{}", String::from_utf8_lossy(&output.stderr));
    Ok(output)
}

fn main() -> anyhow::Result<()> {
    let config = format!(
        "[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7291\", \"udp:4728\", \"tcp:6742\"]\n\
         sequence_timeout = \"10s\"\nopen_for = \"{OPEN_FOR_SECS}s\"\nprotect = [\"tcp:22\"]\n"
    );
    say("Creating namespaces `server` and `client` joined by veth, starting sshd on the server");
    let lab = Lab::new();
    let sshd = Sshd::start(&lab);
    println!(
        "server {SERVER_V4} ({}), client {} ({})",
        lab.server.name,
        lab::CLIENT_V4,
        lab.client.name
    );
    say(
        "Attaching xknock to the server's veth with this configuration (events below are its JSON stream):",
    );
    print!("{config}");
    let xknock = Xknock::start(&lab, &config, &[], true);

    say("ssh root@198.18.0.1 before knocking: refused, exactly as at a port where nothing listens");
    let before = ssh(&sshd, &lab)?;
    ensure!(
        ssh_refused(&before),
        "ssh should have been refused before the knock"
    );

    say("xknock knock 198.18.0.1 tcp:7291 udp:4728 tcp:6742");
    lab::knock(&lab, &[SERVER_V4, "tcp:7291", "udp:4728", "tcp:6742"]);
    xknock.expect_event(&[("event", "grant")]);

    say("ssh again: the knocking address now has a grant");
    let after = ssh(&sshd, &lab)?;
    ensure!(
        after.status.success(),
        "ssh should have worked after the knock"
    );

    say(&format!(
        "Waiting for the grant to expire (open_for = {OPEN_FOR_SECS}s)"
    ));
    xknock
        .wait_event(
            &[("event", "expired")],
            Duration::from_secs(OPEN_FOR_SECS + 5),
        )
        .context("the grant did not expire")?;

    say("ssh once more: refused again");
    let expired = ssh(&sshd, &lab)?;
    ensure!(
        ssh_refused(&expired),
        "ssh should have been refused after the grant expired"
    );

    say("Stopping xknock run (SIGINT): it prints its verdict counters; the filter stays");
    let filter = Arc::clone(xknock.filter());
    let (status, _) = xknock.stop();
    ensure!(status.success(), "xknock exited with {status}");
    let still = ssh(&sshd, &lab)?;
    ensure!(
        ssh_refused(&still),
        "ssh should still be refused with xknock run stopped"
    );
    say("xknock detach: the only way the filter comes off");
    let detached = filter.xknock(&lab, &["detach", "--config", filter.arg()]);
    ensure!(
        detached.status.success(),
        "xknock detach failed: {detached:?}"
    );
    print!("{}", String::from_utf8_lossy(&detached.stderr));
    say("Demo complete; namespaces removed.");
    Ok(())
}
