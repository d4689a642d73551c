//! Builds the XDP program (knock-ebpf) with the pinned BPF toolchain and
//! bpf-linker, and leaves it in OUT_DIR for `include_bytes_aligned!`.
//!
//! Without bpf-linker the build fails: an `xknock` without its program could
//! not filter anything, and a build that silently produced one was once picked
//! up by the demo and the tests. A build that only checks or lints may ask for
//! that hollow binary explicitly with `XKNOCK_WITHOUT_EBPF=1`; it then says so
//! in `xknock --version` and refuses to run. The script runs again whenever
//! PATH, that variable, or the bpf-linker binary it found changes, so a build
//! made before bpf-linker was installed is never reused after.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

/// bpf-linker 0.10.3 links with this nightly's own LLVM 22.
const BPF_TOOLCHAIN: &str = "nightly-2026-07-01";
const EBPF_PACKAGE: &str = "knock-ebpf";
/// The objects knock-ebpf's binaries become, each embedded in the library.
const OBJECTS: [&str; 3] = [EBPF_PACKAGE, "knock-traced", "knock-baseline"];
/// Set to 1 for a check-only or lint-only build without the XDP program.
const WITHOUT_EBPF: &str = "XKNOCK_WITHOUT_EBPF";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed={WITHOUT_EBPF}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var_os(WITHOUT_EBPF).is_some_and(|v| v == "1") {
        println!(
            "cargo::warning={WITHOUT_EBPF}=1: this xknock carries no XDP program and cannot filter"
        );
        for object in OBJECTS {
            fs::write(out_dir.join(object), [])?;
        }
        return Ok(());
    }
    let Some(linker) = find_on_path("bpf-linker") else {
        bail!(
            "bpf-linker is not on PATH, so the XDP program cannot be built. \
             Run `./x setup` (or `cargo xtask setup`), which installs it and the \
             pinned {BPF_TOOLCHAIN}; a check-only build can set {WITHOUT_EBPF}=1."
        );
    };
    // A reinstalled or upgraded linker builds the program again.
    println!("cargo::rerun-if-changed={}", linker.display());
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("knock-user has no parent directory"))?
        .join(EBPF_PACKAGE);
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The nested cargo's progress ("Compiling ...", "Finished ...") would
    // reach every build as dozens of `cargo::warning` lines that drown a
    // real one: quiet, it says only what its compilers say (warnings and
    // errors, still shown) and why it failed.
    // SAFETY: the build script is single-threaded here; nothing reads the
    // environment concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(BPF_TOOLCHAIN),
    )?;
    for object in OBJECTS {
        let path = out_dir.join(object);
        let size = fs::metadata(&path)
            .with_context(|| format!("the build left no {}", path.display()))?
            .len();
        if size == 0 {
            bail!("the build left {} empty", path.display());
        }
    }
    Ok(())
}

/// The first executable file named `name` in a directory of PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let is_executable = |path: &Path| {
        fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
}
