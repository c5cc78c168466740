//! The priority of the threads that carry records from the kernel to their outputs.
//!
//! At saturation every core is busy with the traced workload, and a thread of nice 0 that
//! wakes to empty the ring buffer waits its turn behind it: tens of milliseconds, during
//! which the ring has to hold every record (and VmHWM counts its pages twice, as they are
//! mapped twice) and the queues behind it grow. The work of these threads is set by the
//! record rate, not by their priority: a higher one changes when they run, not how much.
//! So they run at [`NICE`], which lets the ring be small and the backlogs short; without the
//! right to raise it (no CAP_SYS_NICE) they keep the priority they have.

/// The nice value of the record threads: enough for the scheduler to run them as soon as
/// they wake on a machine saturated at nice 0, measured with the bench at 4 to 32 clients.
pub const NICE: i32 = -10;

/// Raises the calling thread to [`NICE`]; whether it could.
pub fn raise() -> bool {
    // SAFETY: plain syscalls on the calling thread's id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_without_the_right_leaves_the_thread_as_it_was() {
        // Run in a thread of its own: the test harness's threads are shared.
        let (could, after) = std::thread::spawn(|| {
            let could = raise();
            // SAFETY: as in `raise`.
            let after = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as u32) };
            (could, after)
        })
        .join()
        .unwrap();
        if could {
            assert_eq!(after, NICE);
        } else {
            assert!(after > NICE);
        }
    }
}
