//! `SOURCE_HORIZONS` mapped into the loader's memory, one atomic word at a
//! time.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::AtomicU32,
};

use knock_common::{SOURCE_HORIZON_SLOTS, SourceHorizon};

/// `SOURCE_HORIZONS` mapped into this process (the map is
/// BPF_F_MMAPABLE), so the loader changes one word of a slot atomically: a
/// write through the bpf syscall replaces a whole slot, and could undo what
/// the XDP program wrote to its other words in the same moment.
pub(super) struct MappedHorizons {
    base: *mut libc::c_void,
    len: usize,
}

impl MappedHorizons {
    pub(super) fn map(data: &aya::maps::MapData) -> std::io::Result<MappedHorizons> {
        let len = SOURCE_HORIZON_SLOTS as usize * size_of::<SourceHorizon>();
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a new shared mapping of the map's fd; the kernel refuses
        // one longer than the map's values (its slots, page-rounded).
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
        Ok(MappedHorizons { base, len })
    }

    /// The word at `field` (an offset into `SourceHorizon`) of `slot`.
    pub(super) fn word(&self, slot: u32, field: usize) -> &AtomicU32 {
        assert!(
            slot < SOURCE_HORIZON_SLOTS && field + 4 <= size_of::<SourceHorizon>(),
            "a word of a horizon slot"
        );
        let at = slot as usize * size_of::<SourceHorizon>() + field;
        // SAFETY: inside the mapping (checked above), 4-aligned (a
        // page-aligned base, 16-byte slots of u32 fields), and the program
        // changes it only by whole-word stores or atomic adds.
        unsafe { AtomicU32::from_ptr(self.base.cast::<u8>().add(at).cast::<u32>()) }
    }
}

// SAFETY: a shared mapping of kernel memory, valid until dropped, which
// any thread may read and which is only ever changed through atomics.
unsafe impl Send for MappedHorizons {}
// SAFETY: as above; `word` hands out atomics only.
unsafe impl Sync for MappedHorizons {}

impl Drop for MappedHorizons {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, unmapped once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}
