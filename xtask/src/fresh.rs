//! The fresh-machine order of events, replayed without uninstalling anything:
//! in a target directory of its own, the first builds see a PATH without
//! bpf-linker (as `./x` does before set-up has installed it), later ones the
//! real PATH. Once, building xtask built xknock's build script first, which
//! cached a binary without its XDP program that every later build reused; the
//! demo and the tests then failed on every fresh machine while CI, on a
//! machine already set up, stayed green.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, ensure};

use crate::{debug_dir, ensure_carries_program, workspace_root};

const LINKER: &str = "bpf-linker";
/// The protobuf compiler, which etcd-client's build runs (Debian's
/// protobuf-compiler, installed by set-up with libprotobuf-dev).
const PROTOC: &str = "protoc";

/// Builds in target/fresh-machine, first without bpf-linker, then with it,
/// and fails unless each step does what a fresh machine needs.
pub fn check_order_of_events() -> anyhow::Result<()> {
    let target = workspace_root().join("target/fresh-machine");
    eprintln!(
        "xtask: fresh-machine order of events, in {}",
        target.display()
    );
    if target.exists() {
        fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))?;
    }
    let shadows = target.join("path-without");
    // Before set-up neither is there; a check-only build still needs protoc.
    let before_setup = path_without(&[LINKER, PROTOC], &shadows.join("before-setup"))?;
    let without_linker = path_without(&[LINKER], &shadows.join("without-linker"))?;
    let real_path = env::var_os("PATH").unwrap_or_default();
    let xknock = debug_dir(&target).join("xknock");

    // `./x` builds xtask before set-up has installed anything.
    let built = build(&target, &before_setup, &[], "xtask")?;
    ensure!(
        built.status.success(),
        "xtask does not build without bpf-linker and protoc, so set-up could never run:\n{}",
        stderr(&built)
    );

    // Building xknock before set-up fails, and says what to do.
    let refused = build(&target, &before_setup, &[], "knock-user")?;
    // Which build script stops it first varies: xknock's own, or
    // etcd-client's (which needs protoc).
    let named = ["bpf-linker is not on PATH", "Could not find `protoc`"];
    ensure!(
        !refused.status.success() && named.iter().any(|n| stderr(&refused).contains(n)),
        "building xknock before set-up should fail naming what set-up installs (bpf-linker, protoc); it {}:\n{}",
        refused.status,
        stderr(&refused)
    );
    ensure!(
        !xknock.exists(),
        "a failed build left {} behind",
        xknock.display()
    );

    // A check-only build may ask for a hollow binary; it says so and refuses to run.
    let hollow = build(
        &target,
        &without_linker,
        &[("XKNOCK_WITHOUT_EBPF", "1")],
        "knock-user",
    )?;
    ensure!(
        hollow.status.success(),
        "the check-only build failed:\n{}",
        stderr(&hollow)
    );
    ensure!(
        ensure_carries_program(&xknock).is_err(),
        "a build with XKNOCK_WITHOUT_EBPF=1 claims to carry its program"
    );
    let config = target.join("check-only.toml");
    fs::write(
        &config,
        "[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:3721\", \"udp:4728\", \"tcp:6742\"]\n\
         sequence_timeout = \"10s\"\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n",
    )?;
    let run = Command::new(&xknock)
        .args(["run", "--iface", "lo", "--config"])
        .arg(&config)
        .output()
        .context("running the check-only xknock")?;
    ensure!(
        !run.status.success() && stderr(&run).contains("built without its XDP program"),
        "the check-only xknock should refuse to run; it {}:\n{}",
        run.status,
        stderr(&run)
    );

    // After set-up (bpf-linker on PATH), the same target directory builds a
    // binary that carries its program: nothing hollow is reused.
    let real = build(&target, &real_path, &[], "knock-user")?;
    ensure!(
        real.status.success(),
        "building xknock after set-up failed:\n{}",
        stderr(&real)
    );
    ensure_carries_program(&xknock)?;
    fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))?;
    eprintln!("xtask: fresh-machine order of events: ok");
    Ok(())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `cargo build --package PACKAGE` in `target` with `path` as PATH.
fn build(
    target: &Path,
    path: &OsString,
    envs: &[(&str, &str)],
    package: &str,
) -> anyhow::Result<Output> {
    let extra: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    eprintln!(
        "xtask: {}cargo build --package {package} (target {}, bpf-linker {})",
        extra.concat(),
        target.display(),
        if find(LINKER, path).is_some() {
            "on PATH"
        } else {
            "absent"
        }
    );
    let mut command = if find(LINKER, path).is_some() {
        // The rustup proxy, found on `path`, picks the toolchain as `./x` does.
        Command::new(find("cargo", path).context("no cargo on PATH")?)
    } else {
        // The toolchain's own cargo and rustc: rustup's proxies append
        // ~/.cargo/bin to PATH, which would bring bpf-linker back.
        let cargo = PathBuf::from(env!("CARGO"));
        let mut command = Command::new(&cargo);
        command.env("RUSTC", cargo.with_file_name("rustc"));
        command
    };
    if find(PROTOC, path).is_none() {
        command.env_remove("PROTOC");
    }
    let output = command
        .args(["build", "--package", package])
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .output()
        .context("running cargo build")?;
    Ok(output)
}

/// The first executable named `name` in `path`.
fn find(name: &str, path: &OsString) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// PATH with `names` hidden: each directory that holds one is replaced by
/// a directory under `shadows` that links to everything else in it.
fn path_without(names: &[&str], shadows: &Path) -> anyhow::Result<OsString> {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = Vec::new();
    for (index, dir) in env::split_paths(&path).enumerate() {
        if !names.iter().any(|name| dir.join(name).exists()) {
            dirs.push(dir);
            continue;
        }
        let shadow = shadows.join(index.to_string());
        fs::create_dir_all(&shadow)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if !names.iter().any(|name| entry.file_name() == *name) {
                symlink(entry.path(), shadow.join(entry.file_name()))?;
            }
        }
        dirs.push(shadow);
    }
    let without = env::join_paths(dirs)?;
    for name in names {
        ensure!(
            find(name, &without).is_none(),
            "{name} is still on the PATH meant to hide it"
        );
    }
    Ok(without)
}
