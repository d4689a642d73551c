//! Other port knockers' configurations carried over into xknock's, each
//! with a warning (naming the option and its line) for all that cannot be:
//! knockd's knockd.conf (`knockd`) and fwknopd's access.conf and
//! fwknopd.conf (`fwknop`).

// What the network or a file sends never panics here: every such path
// returns an error the operator reads (#25; the fuzz targets hold it too).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

mod fwknop;
mod knockd;

pub use fwknop::{FwknopImportError, import_fwknop};
pub use knockd::{DEFAULT_OPEN_FOR, ImportError, Imported, import_knockd};
