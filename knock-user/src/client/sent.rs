//! What this client already sent of rotating sequences. Each sequence
//! opens once, so a second knock within one window would open nothing: the
//! client remembers, per secret, the last window it sent, and a knock in
//! that window waits for the next one.
//!
//! Kept in `$XDG_STATE_HOME/xknock` (else `~/.local/state/xknock`); a client
//! that cannot keep it knocks anyway.

use std::{
    fs,
    path::PathBuf,
    thread,
    time::{Duration, SystemTime},
};

use anyhow::anyhow;

use crate::config::{PortSpec, rotating::Rotating};

/// The window to send and its sequence: the current one, or the next if
/// this client sent the current one already (after waiting for it).
pub fn next_window(rotating: &Rotating) -> anyhow::Result<(u64, Vec<PortSpec>)> {
    let now = SystemTime::now();
    let mut window = rotating.window(now);
    // A record from the future (a clock set back) is not waited for.
    if let Some(last) = last_sent(rotating).filter(|&last| last == window) {
        let next = last + 1;
        let wait = rotating
            .window_start(next)
            .duration_since(now)
            .unwrap_or_default();
        log::info!(
            "this window's sequence was sent already and opens only once; waiting {:.1}s for the next window",
            wait.as_secs_f64()
        );
        thread::sleep(wait + Duration::from_millis(20));
        window = next;
    }
    let steps = rotating.sequence(window).map_err(|e| anyhow!(e))?;
    Ok((window, steps))
}

/// Notes that `window`'s sequence was sent; best effort.
pub fn record(rotating: &Rotating, window: u64) {
    let Some(path) = state_file(rotating) else {
        return;
    };
    if let Some(dir) = path.parent() {
        drop(fs::create_dir_all(dir));
    }
    drop(fs::write(path, format!("{window}\n")));
}

fn last_sent(rotating: &Rotating) -> Option<u64> {
    fs::read_to_string(state_file(rotating)?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn state_file(rotating: &Rotating) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state"))
        })?;
    Some(
        base.join("xknock")
            .join(format!("rotating-{}", rotating.key_id())),
    )
}
