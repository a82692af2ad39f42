//! The thread count of candle's CPU kernels, worked out once per process.

/// Fixes the number of threads candle's CPU kernels use, once, for the whole process.
///
/// candle asks for its thread count on every matrix product (`utils::get_num_threads`), and
/// unless `RAYON_NUM_THREADS` is set that reads and parses `/proc/cpuinfo` each time: about
/// 30 products per decoding step, 1.4 ms of a 7 ms `q8_0` step on this machine (measured with
/// `perf`). Setting the variable to the count candle would have chosen keeps its choice and
/// makes every later ask an environment lookup. Rayon's global pool, which the engine's own
/// kernels use, reads the same variable and so runs as many threads.
///
/// Call it first thing in `main`, before any other thread starts: changing the environment
/// while another thread reads it is undefined behaviour. A value the user set is kept.
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = candle_core::utils::get_num_threads().max(1);
    // SAFETY: documented precondition — called from `main` before any other thread exists,
    // so nothing reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string())
    };
}
