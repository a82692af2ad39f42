//! How the process's allocator treats freed memory.
//!
//! Inference and training free and re-allocate buffers of megabytes on every operation. By
//! default glibc hands them back to the kernel (`munmap`, heap trim), so every new buffer is
//! faulted in and zeroed again page by page: `../shared/reference/performance.md` measured a
//! third of the CPU time of a bench run in the kernel. [`keep_freed_memory`] makes malloc
//! keep them for reuse while work runs; [`release_kept_memory`] hands them back once it is
//! done (the worker calls it when its queue is empty), so an idle editor does not hold the
//! peak of its last job.

/// Buffers up to this size come from the heap (glibc's largest allowed threshold, 32 MiB on
/// 64-bit), not from a `mmap` of their own that `free` would unmap.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Freed memory at the top of a heap is kept up to this much (glibc's default: 128 KiB).
const TRIM_THRESHOLD: i32 = 1 << 30;
/// Extra memory asked of the kernel whenever a heap grows, so growth is rare.
const TOP_PAD: i32 = 64 << 20;

/// Tells glibc's malloc to keep freed memory for reuse (no-op elsewhere). Call it early in
/// `main`; settings given in `GLIBC_TUNABLES` are left as the user set them.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|t| t.to_string_lossy().contains("malloc"))
        {
            return;
        }
        // SAFETY: mallopt only changes malloc's parameters; it is thread-safe in glibc.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}

/// Returns freed memory that malloc kept to the kernel (no-op off glibc).
pub fn release_kept_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists; it is thread-safe in glibc.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Minor page faults of the calling thread so far.
    #[allow(unsafe_code)]
    fn minor_faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    /// A 16 MiB buffer written whole, then freed.
    fn touch() {
        let v = vec![1u8; 16 << 20];
        std::hint::black_box(&v);
    }

    #[test]
    fn freed_buffers_are_reused_without_faulting_pages_in_again() {
        super::keep_freed_memory();
        touch();
        let before = minor_faults();
        for _ in 0..4 {
            touch();
        }
        let faults = minor_faults() - before;
        // Each buffer is 4096 pages: glibc's defaults fault all of them in every time.
        assert!(
            faults < 1000,
            "{faults} page faults for 4 reused 16 MiB buffers"
        );
        super::release_kept_memory();
    }
}
