//! Ends the guest with an exit status qemu reports: a write to the
//! isa-debug-exit device (I/O port 0xf4, `-device isa-debug-exit,iobase=0xf4,
//! iosize=0x04`) makes qemu exit with status `2 * value + 1`. Done with
//! ioperm(2) and an `out` instruction, since the -cloud kernels have no
//! /dev/port.

/// The port the run script gives the isa-debug-exit device.
pub const PORT: u16 = 0xf4;

/// Writes `code` to the device. Returns only if the write did not end the
/// guest (no such device, or no permission for the port).
pub fn exit(code: u32) -> std::io::Error {
    // SAFETY: ioperm only changes this process's I/O permission bitmap; the
    // arguments are plain integers.
    if unsafe { libc::ioperm(libc::c_ulong::from(PORT), 4, 1) } != 0 {
        return std::io::Error::last_os_error();
    }
    // SAFETY: ioperm above granted this process ports 0xf4..0xf8; an `out`
    // to them reaches qemu's isa-debug-exit device (or nothing, on a machine
    // without one) and touches no memory.
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") PORT, in("eax") code, options(nomem, nostack));
    }
    std::io::Error::other("isa-debug-exit did not end the machine (no such device?)")
}
