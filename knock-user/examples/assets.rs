//! Writes the man pages, shell completions and systemd unit into OUT_DIR
//! (`cargo xtask dist` runs it):
//!
//!     cargo run -p knock-user --example assets -- OUT_DIR

use anyhow::Context as _;

#[expect(
    clippy::print_stderr,
    reason = "a program run by `cargo xtask dist`: it reports on stderr"
)]
fn main() -> anyhow::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .context("usage: assets OUT_DIR")?;
    let out = std::path::Path::new(&out);
    xknock::cli::write_assets(out).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("assets: wrote {}", out.display());
    Ok(())
}
