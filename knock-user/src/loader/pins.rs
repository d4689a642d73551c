//! Where a filter lives between loaders: its pin directory on bpffs.
//!
//! ```text
//! PIN_DIR/                         one filter instance; flock()ed by `run`
//!   layout-N/                      N = LAYOUT_VERSION: an older or newer layout is
//!                                  detected, never reinterpreted; flock()ed
//!                                  while what is pinned changes
//!     maps/NAME
//!       state that outlives loaders: progress, grants, flows, penalties,
//!       horizons, counters, events, ICMP limits, spent sequences, the
//!       instance record
//!     gen-N/NAME                   one configuration: settings, rules, port
//!       roles, lists, the slots of the programs the filter tail-calls
//!       (concealment, knocks), and PROGRAM, the filter
//!       program made for them (a packet sees one generation or the next,
//!       never a mix: they swap with the program)
//!     links/MODE:IFACE             the XDP link of each interface (bpffs
//!                                  refuses dots: IFACE's are written %2e)
//!     egress/IFACE                 the TC egress link of each interface (the
//!                                  program that gives answers back their ports)
//! ```
//!
//! Which map goes where is its kind in the map table (`table.rs`);
//! [`PinDir::pin`] places it.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::programs::{
    ProgramError,
    links::{FdLink, PinnedLink},
};
use knock_common::LAYOUT_VERSION;

use super::table::{Kind, Row, name};

/// bpffs's magic number in statfs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why the pin directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Pins only survive on bpffs.
    #[error("{0} is not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    /// Another loader holds the directory.
    #[error(
        "{0} is in use by another xknock (a running `xknock run`, or a command changing the filter); stop it first"
    )]
    Busy(PathBuf),
    /// An xknock of another version pinned its maps here.
    #[error(
        "{dir} holds a filter of pinned layout {found}; this xknock uses layout {LAYOUT_VERSION} and will not reinterpret it: take it off with the xknock that made it (`xknock detach`), or remove {dir}"
    )]
    OtherLayout { dir: PathBuf, found: String },
    /// Nothing is pinned there.
    #[error("no filter is pinned at {0} (is `pin_dir` right, and was `xknock run` started?)")]
    NoFilter(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One filter's pin directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
    layout: PathBuf,
}

/// Exclusive use of a pin directory, until dropped (or the process ends,
/// however it ends).
#[derive(Debug)]
pub struct Lock {
    _dir: File,
}

/// One pinned XDP link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLinkPath {
    pub iface: String,
    /// The attach mode the link was made with: "native" or "generic".
    pub mode: String,
    pub path: PathBuf,
}

impl PinnedLinkPath {
    /// The index of the interface the link holds the program on, as the
    /// kernel reports it (`ifindex` in the link's fdinfo): 0 once that
    /// interface is gone (its links are detached with it).
    pub fn ifindex(&self) -> io::Result<u32> {
        let path = CString::new(self.path.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a pin path with a NUL byte"))?;
        // `union bpf_attr` for BPF_OBJ_GET: the path's address, then
        // bpf_fd and file_flags (zero), padded as the kernel reads it.
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64;
        const BPF_OBJ_GET: libc::c_long = 7;
        // SAFETY: `attr` outlives the call and is as large as the size we
        // pass; the kernel only reads the NUL-terminated path it names.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just returned, owned from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
        info.lines()
            .find_map(|line| line.strip_prefix("ifindex:"))
            .and_then(|index| index.trim().parse().ok())
            .ok_or_else(|| io::Error::other("no ifindex in the link's fdinfo"))
    }
}

/// The index of the interface named `iface` in this network namespace, or
/// 0 when there is none.
pub fn interface_index(iface: &str) -> u32 {
    let Ok(name) = CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> PinDir {
        let root = root.into();
        let layout = root.join(format!("layout-{LAYOUT_VERSION}"));
        PinDir { root, layout }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory (on bpffs), refuses one holding another
    /// layout, and takes it for this process (`xknock run` holds it for its
    /// life); fails at once if another process has it.
    pub fn own(&self) -> Result<Lock, PinError> {
        let lock = self.own_any_layout()?;
        self.check_layout()?;
        for dir in [self.maps_dir(), self.links_dir(), self.egress_dir()] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        Ok(lock)
    }

    /// The right to change what is pinned (load a generation, swap programs
    /// on the links); waits up to `patience` for another change to end.
    pub fn change(&self, patience: std::time::Duration) -> Result<Lock, PinError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match flock(&self.layout) {
                Err(PinError::Busy(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Takes the directory whatever layout it holds (to remove it).
    pub fn own_any_layout(&self) -> Result<Lock, PinError> {
        // Nothing is made outside bpffs, where pins could not live anyway;
        // and the directory is below a mount, never the mount itself (whose
        // other pins `detach` would remove).
        let existing = self
            .root
            .parent()
            .unwrap_or_else(|| Path::new("/"))
            .ancestors()
            .find(|dir| dir.exists())
            .unwrap_or_else(|| Path::new("/"));
        check_bpffs(existing, &self.root)?;
        fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        flock(&self.root)
    }

    /// Refuses a directory where another layout version is pinned.
    fn check_layout(&self) -> Result<(), PinError> {
        let ours = self.layout.file_name().unwrap_or_default();
        for entry in fs::read_dir(&self.root).map_err(io_error(&self.root))? {
            let name = entry.map_err(io_error(&self.root))?.file_name();
            if name != ours && name.to_string_lossy().starts_with("layout-") {
                return Err(PinError::OtherLayout {
                    dir: self.root.clone(),
                    found: name.to_string_lossy().trim_start_matches("layout-").into(),
                });
            }
        }
        Ok(())
    }

    /// Fails unless a filter of this layout is pinned here.
    pub fn require_filter(&self) -> Result<(), PinError> {
        if self.root.is_dir() {
            self.check_layout()?;
        }
        if !self.map(name::INSTANCE).exists() {
            return Err(PinError::NoFilter(self.root.clone()));
        }
        Ok(())
    }

    fn maps_dir(&self) -> PathBuf {
        self.layout.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.layout.join("links")
    }

    fn egress_dir(&self) -> PathBuf {
        self.layout.join("egress")
    }

    /// Where the egress link of `iface` is pinned.
    pub fn egress_link(&self, iface: &str) -> PathBuf {
        self.egress_dir().join(escape(iface))
    }

    /// The pin of a state map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Where a filter whose configuration is generation `generation` pins
    /// the map of `row`: state in `maps/`, the configuration's maps and
    /// program slots in the generation's directory; `None` for a map never
    /// pinned.
    pub fn pin(&self, row: &Row, generation: u64) -> Option<PathBuf> {
        match row.kind {
            Kind::State => Some(self.map(row.name)),
            Kind::Generation | Kind::Slot { .. } => {
                Some(self.generation(generation).join(row.name))
            }
            Kind::Scratch | Kind::Trace => None,
        }
    }

    /// The directory of configuration generation `generation`.
    pub fn generation(&self, generation: u64) -> PathBuf {
        self.layout.join(format!("gen-{generation}"))
    }

    /// Makes the directory of a new generation, empty.
    pub fn new_generation(&self, generation: u64) -> Result<PathBuf, PinError> {
        let dir = self.generation(generation);
        // A leftover of a loader that died before using it.
        remove_tree(&dir)?;
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(dir)
    }

    /// Removes every generation but `keep`: once every link runs `keep`'s
    /// program, nothing uses the others.
    pub fn remove_generations_but(&self, keep: u64) -> Result<(), PinError> {
        let keep = self.generation(keep);
        for entry in fs::read_dir(&self.layout).map_err(io_error(&self.layout))? {
            let path = entry.map_err(io_error(&self.layout))?.path();
            let is_generation = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gen-"));
            if is_generation && path != keep {
                remove_tree(&path)?;
            }
        }
        Ok(())
    }

    /// Where the link of `iface`, made in `mode`, is pinned.
    pub fn link(&self, iface: &str, mode: &str) -> PathBuf {
        self.links_dir().join(format!("{mode}:{}", escape(iface)))
    }

    /// Every pinned link.
    pub fn links(&self) -> Result<Vec<PinnedLinkPath>, PinError> {
        let dir = self.links_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(&dir)(error)),
        };
        let mut links = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_error(&dir))?.path();
            let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
                continue;
            };
            // Interface names cannot hold a colon.
            if let Some((mode, iface)) = name.split_once(':') {
                links.push(PinnedLinkPath {
                    iface: iface.replace("%2e", ".").replace("%25", "%"),
                    mode: mode.to_owned(),
                    path: path.clone(),
                });
            }
        }
        links.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(links)
    }

    /// Unpins everything below the directory and removes it: the links
    /// detach (no process holds them) and the maps go with the programs.
    pub fn remove(&self) -> Result<(), PinError> {
        // The filters first, then what answers for them: nothing steered
        // is left without the program that gives its answer back its ports.
        remove_tree(&self.links_dir())?;
        remove_tree(&self.root)
    }
}

/// Swaps a program onto the link pinned at `path` (the `what` of `iface`)
/// in one step, with `swap`; false when the pin is stale (the interface went
/// away and took the link's attachment with it): the pin is removed then,
/// for a new link to take its place.
pub fn swap_pinned<L>(
    path: &Path,
    what: &str,
    iface: &str,
    swap: impl FnOnce(L) -> Result<(), ProgramError>,
) -> io::Result<bool>
where
    L: TryFrom<FdLink>,
    L::Error: std::error::Error + Send + Sync + 'static,
{
    let link = PinnedLink::from_pin(path).map_err(io::Error::other)?;
    let link = L::try_from(FdLink::from(link)).map_err(io::Error::other)?;
    match swap(link) {
        Ok(()) => Ok(true),
        Err(error) => {
            log::info!(
                "the pinned {what} of `{iface}` is no longer usable ({error}); attaching anew"
            );
            fs::remove_file(path)?;
            Ok(false)
        }
    }
}

/// An interface name as bpffs takes it, which refuses dots.
fn escape(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

/// An exclusive flock on the directory `path`, or `Busy` at once.
fn flock(path: &Path) -> Result<Lock, PinError> {
    let dir = File::open(path).map_err(io_error(path))?;
    // SAFETY: a valid fd; flock only acts on it.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            PinError::Busy(path.to_owned())
        } else {
            PinError::Io {
                path: path.to_owned(),
                source: error,
            }
        });
    }
    Ok(Lock { _dir: dir })
}

/// Fails unless `path` (where `root` is, or will be) is on bpffs.
#[allow(
    trivial_numeric_casts,
    reason = "statfs's f_type is i64 here, but unsigned or narrower on other targets (musl, 32-bit)"
)]
fn check_bpffs(path: &Path, root: &Path) -> Result<(), PinError> {
    let not_bpffs = || PinError::NotBpffs(root.to_owned());
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| not_bpffs())?;
    // SAFETY: an all-zero statfs is a valid value for the call to overwrite.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a writable struct.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io_error(path)(io::Error::last_os_error()));
    }
    if stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(not_bpffs());
    }
    Ok(())
}

/// Removes a directory tree of pins; a missing one is fine.
fn remove_tree(path: &Path) -> Result<(), PinError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path)(error)),
    }
}
