//! Spoofed floods for the bench and the soak: the reference object's
//! `xdp_flood` generator sends a template frame from random IPv4 sources
//! out of a veth with BPF_PROG_TEST_RUN in live-frames mode.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use xknock::loader::BASELINE_OBJECT;

use crate::Netns;

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Loads `generator` in `client`'s namespace on a thread pinned to CPU 0,
/// aimed out of `iface` with `template`, and hands `work` a function that
/// sends that many spoofed frames (BPF_PROG_TEST_RUN, live frames) and
/// returns the time the kernel spent sending them, its set-up excluded.
pub fn with_generator<T: Send + 'static>(
    client: &Netns,
    iface: String,
    generator: &'static str,
    template: Vec<u8>,
    work: impl FnOnce(&dyn Fn(u32) -> anyhow::Result<Duration>) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    client.within(move || -> anyhow::Result<T> {
        pin_to_cpu(0)?;
        let mut ebpf = Ebpf::load(BASELINE_OBJECT)?;
        let program: &mut Xdp = ebpf.program_mut(generator).context(generator)?.try_into()?;
        program.load()?;
        // The generator rewrites (and restores) the first 54 bytes only.
        let frame: [u8; 54] = template
            .get(..54)
            .and_then(|head| head.try_into().ok())
            .context("a template of at least 54 bytes")?;
        let mut slot: aya::maps::Array<_, [u8; 54]> = ebpf
            .map_mut("FLOOD_TEMPLATE")
            .context("FLOOD_TEMPLATE")?
            .try_into()?;
        slot.set(0, &frame, 0)?;
        let program: &Xdp = ebpf.program(generator).context(generator)?.try_into()?;
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(index != 0, "no client interface");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&index.to_ne_bytes());
        let send = |frames: u32| -> anyhow::Result<Duration> {
            let run = program.test_run(TestRunOptions {
                data_in: Some(&template),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..TestRunOptions::default()
            })?;
            // The kernel reports the time per frame.
            Ok(run.duration * frames)
        };
        work(&send)
    })
}
