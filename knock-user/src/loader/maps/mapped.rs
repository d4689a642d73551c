//! BPF_F_MMAPABLE arrays mapped into the loader's memory, read and written
//! one atomic word at a time: `SOURCE_HORIZONS` and `FIRST_STEPS`.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, AtomicU64},
};

use knock_common::{SOURCE_HORIZON_SLOTS, SourceHorizon};

/// An array map mapped into this process (the map is BPF_F_MMAPABLE), so
/// the loader changes one word atomically: a write through the bpf syscall
/// replaces a whole value, and could undo what the XDP program wrote to
/// its other words in the same moment. The program changes these maps only
/// by whole-word stores or atomic adds.
pub(super) struct Mapped {
    base: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps the first `len` bytes of the values of the map behind `data`.
    pub(super) fn map(data: &aya::maps::MapData, len: usize) -> std::io::Result<Mapped> {
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a new shared mapping of the map's fd; the kernel refuses
        // one longer than the map's values (page-rounded).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { base, len })
    }

    /// The word at `field` (an offset into `SourceHorizon`) of horizon
    /// slot `slot` (of a mapped `SOURCE_HORIZONS`).
    pub(super) fn word(&self, slot: u32, field: usize) -> &AtomicU32 {
        assert!(
            slot < SOURCE_HORIZON_SLOTS && field + 4 <= size_of::<SourceHorizon>(),
            "a word of a horizon slot"
        );
        let at = slot as usize * size_of::<SourceHorizon>() + field;
        assert!(at + 4 <= self.len, "inside the mapping");
        // SAFETY: inside the mapping (checked above), 4-aligned (a
        // page-aligned base, 16-byte slots of u32 fields).
        unsafe { AtomicU32::from_ptr(self.base.cast::<u8>().add(at).cast::<u32>()) }
    }

    /// The `index`th 64-bit word (of a mapped `FIRST_STEPS`: its ways, one
    /// bucket after another).
    pub(super) fn word64(&self, index: usize) -> &AtomicU64 {
        assert!((index + 1) * 8 <= self.len, "inside the mapping");
        // SAFETY: inside the mapping (checked above), 8-aligned (a
        // page-aligned base).
        unsafe { AtomicU64::from_ptr(self.base.cast::<u64>().add(index)) }
    }

    /// How many 64-bit words the mapping holds.
    pub(super) fn words64(&self) -> usize {
        self.len / 8
    }
}

// SAFETY: a shared mapping of kernel memory, valid until dropped, which
// any thread may read and which is only ever changed through atomics.
unsafe impl Send for Mapped {}
// SAFETY: as above; it hands out atomics only.
unsafe impl Sync for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, unmapped once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}
