//! The top-level keys: `interfaces`, `pin_dir`, and the `allow` and `deny`
//! lists.

use std::path::Path;

use super::report::Report;
use crate::config::{file::File, model::ConfigError, model::DEFAULT_PIN_DIR};

/// Interface names, the pin directory, and lists that cover more than
/// they seem to.
pub(super) fn check(file: &File, report: &mut Report<'_>) -> Result<(), ConfigError> {
    for iface in &file.interfaces {
        let name = iface.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(report.invalid(
                iface.span(),
                "interfaces",
                format!("`{name}` is not an interface name"),
            ));
        }
    }
    if let Some(dir) = &file.pin_dir {
        let path = dir.get_ref();
        if !path.is_absolute() || path == Path::new("/") {
            return Err(report.invalid(
                dir.span(),
                "pin_dir",
                format!(
                    "`{}` is not an absolute directory below a bpffs mount such as {DEFAULT_PIN_DIR}",
                    path.display()
                ),
            ));
        }
    }
    for (key, list) in [("allow", &file.allow), ("deny", &file.deny)] {
        for prefix in list {
            if prefix.get_ref().covers_all_ipv4() {
                report.warn(
                    prefix.span(),
                    key,
                    format!(
                        "{} also covers every IPv4 address (IPv4 is matched as ::ffff:a.b.c.d)",
                        prefix.get_ref().0
                    ),
                );
            }
        }
    }
    Ok(())
}
