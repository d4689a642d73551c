//! Link options for the XDP objects (bpf-linker does their code generation).
//!
//! `allows-misaligned-mem-access`: a 2- or 4-byte field of a packet header
//! (a port, an IPv4 address word) sits at whatever alignment the frame gives
//! it, so every read through a byte array (alignment 1) was split into byte
//! loads and shifts: 16 loads and 30 ALU instructions for an IPv6 source
//! address. With this feature LLVM emits one load per field, as C's
//! `ip6->saddr.s6_addr32[i]` would; the kernel accepts misaligned packet and
//! map reads where the CPU does them efficiently (every architecture XDP
//! runs natively on; stack accesses stay aligned, as LLVM lays out the stack
//! by each object's alignment and the verifier insists).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo::rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    }
}
