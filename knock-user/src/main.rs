//! `xknock`: a port-knocking firewall that filters at XDP.

// As in the library (lib.rs): what the command line or a file gives never
// panics the binary. It has no unit tests.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use clap::{CommandFactory as _, FromArgMatches as _};
use xknock::{
    admin::{self, status::Status},
    cli::{Cli, Command},
    client::{send_knock, send_spa},
    config::{KernelConfig, load_config, pin_dir_of, read_config},
    daemon::{
        listeners::warn_of_served_ports,
        run::{RunOptions, run},
    },
    loader::embedded_program,
    loader::pins::PinDir,
};

/// The pin directory a configuration file names.
fn pins_of(config: &std::path::Path) -> anyhow::Result<PinDir> {
    Ok(PinDir::new(read_config(config)?.pin_dir))
}

/// `xknock --version`: the version, and whether this binary carries its XDP
/// program (a build made for checks only does not).
fn version() -> String {
    let program = match embedded_program() {
        Some(bytes) => format!("embedded ({bytes} bytes, BPF ELF)"),
        None => "none: built with XKNOCK_WITHOUT_EBPF=1 for checks only, it cannot filter".into(),
    };
    format!("{}\nXDP program: {program}", env!("CARGO_PKG_VERSION"))
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the commands answer on stdout and report on stderr: printing is this binary's job"
)]
fn main() -> ExitCode {
    xknock::cli::log_to_stderr();
    let version: &'static str = Box::leak(version().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        Command::Run {
            config,
            ifaces,
            events,
            mode,
            metrics,
        } => run(RunOptions {
            config,
            ifaces,
            format: events,
            mode,
            metrics,
        }),
        Command::CheckConfig { config } => load_config(&config).and_then(|config| {
            KernelConfig::try_from(&config)?;
            warn_of_served_ports(&config);
            println!("ok: {} rule(s)", config.rules.len());
            Ok(())
        }),
        Command::Knock {
            host,
            steps,
            config,
            rule,
            spa,
            allow_ip,
            delay,
        } => match (config, spa) {
            (Some(config), Some(spa)) => send_spa(&host, &config, &spa, allow_ip),
            (config, _) => send_knock(&host, steps, config, rule, delay),
        },
        Command::Status {
            config,
            json,
            check,
        } => read_config(&config).and_then(|config| {
            let status = Status::read(&PinDir::new(&config.pin_dir))?;
            let fleet = config
                .fleet
                .as_ref()
                .map(|fleet| admin::FleetHosts::read(&config, fleet));
            if json {
                let mut value = serde_json::to_value(&status)?;
                if let Some(fleet) = &fleet {
                    value["fleet"] = serde_json::to_value(fleet)?;
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", status.render_text());
                if let Some(fleet) = &fleet {
                    print!("{}", fleet.render_text());
                }
            }
            if check {
                status.check()?;
            }
            Ok(())
        }),
        Command::Grant {
            addr,
            config,
            rule,
            duration,
        } => pins_of(&config).and_then(|pins| {
            let (prefix, granted) = admin::grant(&pins, addr, &rule, duration)?;
            let what = if prefix.prefix_len() == prefix.max_prefix_len() {
                prefix.addr().to_string()
            } else {
                prefix.to_string()
            };
            eprintln!(
                "xknock: granted {what} rule {rule} for {}",
                humantime::format_duration(granted)
            );
            Ok(())
        }),
        Command::Revoke {
            addr,
            config,
            rule,
            flows,
        } => read_config(&config).and_then(|config| {
            let pins = PinDir::new(&config.pin_dir);
            let (grants, ended) = admin::revoke(&pins, addr, rule.as_deref(), flows)?;
            let what = if addr.prefix_len() == addr.max_prefix_len() {
                addr.addr().to_string()
            } else {
                addr.to_string()
            };
            eprintln!("xknock: revoked {grants} grant(s) of {what}; ended {ended} flow(s)");
            if let Some(fleet) = &config.fleet {
                let keys = admin::revoke_fleet(fleet, addr, rule.as_deref(), flows).map_err(|e| {
                    anyhow!(
                        "revoked on this host only: the fleet could not be told ({e}); its other hosts keep the grant, and give it back to this one when etcd answers again: run the revoke again"
                    )
                })?;
                eprintln!(
                    "xknock: revoked on every host of the fleet {} ({keys} grant record(s) removed)",
                    fleet.prefix
                );
            }
            Ok(())
        }),
        Command::Trace {
            addr,
            config,
            duration,
        } => pins_of(&config).and_then(|pins| xknock::daemon::trace::trace(&pins, addr, duration)),
        Command::ImportKnockd { knockd_conf } => (|| {
            let text = std::fs::read_to_string(&knockd_conf)
                .with_context(|| format!("cannot read {}", knockd_conf.display()))?;
            let imported = xknock::import::import_knockd(&text)
                .with_context(|| format!("converting {}", knockd_conf.display()))?;
            for warning in &imported.warnings {
                eprintln!("xknock: warning: {}: {warning}", knockd_conf.display());
            }
            print!("{}", imported.toml);
            Ok(())
        })(),
        Command::ImportFwknop {
            access_conf,
            fwknopd_conf,
        } => (|| {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let access = read(&access_conf)?;
            let beside = access_conf.with_file_name("fwknopd.conf");
            let fwknopd_conf = fwknopd_conf.or_else(|| beside.exists().then_some(beside));
            let fwknopd = match &fwknopd_conf {
                Some(path) => {
                    eprintln!("xknock: SPA port and packet age from {}", path.display());
                    Some(read(path)?)
                }
                None => None,
            };
            let imported = xknock::import::import_fwknop(&access, fwknopd.as_deref())
                .with_context(|| format!("converting {}", access_conf.display()))?;
            for warning in &imported.warnings {
                eprintln!("xknock: warning: {}: {warning}", access_conf.display());
            }
            print!("{}", imported.toml);
            Ok(())
        })(),
        Command::Keygen => xknock::config::rotating::keygen()
            .map(|secret| println!("{secret}"))
            .map_err(|e| anyhow!("no random bytes from the kernel: {e}")),
        Command::Detach { config } => pin_dir_of(&config).map(PinDir::new).and_then(|pins| {
            if admin::detach(&pins)? {
                eprintln!("xknock: detached; removed {}", pins.root().display());
            } else {
                eprintln!(
                    "xknock: no filter pinned at {}; nothing to do",
                    pins.root().display()
                );
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xknock: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
