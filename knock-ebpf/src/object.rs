//! What every object built from the filter's modules carries besides its
//! programs: the panic handler and the license.

// The crate only builds for BPF (xtask lints it there); host tools that open
// it anyway get std's handler through knock-common's `user` feature.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
