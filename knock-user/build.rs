//! Builds the XDP program (knock-ebpf) with the pinned BPF toolchain and
//! bpf-linker, and leaves it in OUT_DIR for `include_bytes_aligned!`.
//!
//! Without bpf-linker on PATH the build still succeeds (so `cargo check` and
//! clippy work anywhere) but the binary carries no program and `xknock run`
//! says so; `cargo xtask` always installs bpf-linker first.

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

/// bpf-linker 0.10.3 links with this nightly's own LLVM 22.
const BPF_TOOLCHAIN: &str = "nightly-2026-07-01";
const EBPF_PACKAGE: &str = "knock-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let have_linker = Command::new("bpf-linker").arg("--version").output().is_ok();
    if !have_linker {
        println!(
            "cargo::warning=bpf-linker not found: building xknock without its XDP program (run `cargo xtask setup`)"
        );
        for object in [EBPF_PACKAGE, "knock-baseline"] {
            fs::write(out_dir.join(object), [])?;
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("knock-user has no parent directory"))?
        .join(EBPF_PACKAGE);
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(BPF_TOOLCHAIN),
    )
}
