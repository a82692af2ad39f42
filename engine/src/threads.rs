//! How candle's CPU kernels use threads — their count, their workers' spinning — set once
//! per process.

/// Fixes the number of threads candle's CPU kernels use, once, for the whole process, and
/// stops candle's element-wise worker from spinning between operations.
///
/// candle asks for its thread count on every matrix product (`utils::get_num_threads`), and
/// unless `RAYON_NUM_THREADS` is set that reads and parses `/proc/cpuinfo` each time: about
/// 30 products per decoding step, 1.4 ms of a 7 ms `q8_0` step on this machine (measured with
/// `perf`). Setting the variable to the count candle would have chosen keeps its choice and
/// makes every later ask an environment lookup. Rayon's global pool, which the engine's own
/// kernels use, reads the same variable and so runs as many threads.
///
/// candle splits element-wise operations of 64 Ki elements or more (a bias or residual add of
/// an encoder pass) over its own pool of workers, which spin 25 000 `pause`s (about a
/// millisecond here) after each operation before they sleep. The products that come next run
/// on rayon's threads, one per core, so the spinning worker takes a core from them: `perf` put
/// 12 % of a released-size `q8_0` encoder pass in that spin, and with
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT=0` the pass took 0.33–0.36 s against 0.44–0.62 s (a probe,
/// batch 1, alternating runs). The worker now sleeps at once; waking it costs microseconds.
/// In training (a shortened recipe, alternating runs) the VQGAN phase took 7–10 % longer and
/// the stages 9–21 % less; `CANDLE_BARRIER_POOL_SPIN_LIMIT=25000` restores candle's spin.
///
/// Call it first thing in `main`, before any other thread starts: changing the environment
/// while another thread reads it is undefined behaviour. A value the user set is kept.
pub fn fix_thread_count() {
    let n = candle_core::utils::get_num_threads().max(1);
    set_unless_given("RAYON_NUM_THREADS", &n.to_string());
    set_unless_given("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
}

fn set_unless_given(name: &str, value: &str) {
    if std::env::var_os(name).is_some() {
        return;
    }
    // SAFETY: documented precondition — called from `main` before any other thread exists,
    // so nothing reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(name, value)
    };
}
