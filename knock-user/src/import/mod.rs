//! Other port knockers' configurations carried over into xknock's, each
//! with a warning (naming the option and its line) for all that cannot be:
//! knockd's knockd.conf (`knockd`) and fwknopd's access.conf and
//! fwknopd.conf (`fwknop`).

mod fwknop;
mod knockd;

pub use fwknop::{FwknopImportError, import_fwknop};
pub use knockd::{DEFAULT_OPEN_FOR, ImportError, Imported, import_knockd};
