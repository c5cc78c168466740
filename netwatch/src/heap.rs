//! How the C allocator treats netwatch's large buffers.
//!
//! glibc serves a block of 128 KiB or more with its own mapping, returned whole when freed,
//! until such a block is freed: then it raises that threshold to the block's size, and
//! later blocks of that size come from the heap, where a freed one is kept for reuse and
//! fragments it. netwatch's large buffers are short-lived and of many sizes (ring chunks,
//! JSON batches, census pages), so under load the heap grew by ~7 MB of freed blocks that
//! VmHWM counts (a JSON trace at a full TIME_WAIT table: peak 62.3 -> 55.7 MB, steady
//! 57 -> 49 MB). A fixed threshold keeps them mapped and returned.

/// Blocks at least this large get a mapping of their own: above a drain's JSON batch at
/// ordinary rates (~100 KiB), so only bursts pay for the mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_MAPPING_FROM: libc::c_int = 256 << 10;

/// Fixes the threshold (once, at start, before other threads allocate).
pub fn return_large_buffers() {
    // SAFETY: mallopt only sets an allocator parameter; called before other threads run.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM);
    }
}
