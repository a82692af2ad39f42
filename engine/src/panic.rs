//! Panics from libraries on hostile input (a malformed `tokenizer.json`, a pickle the reader
//! chokes on) caught and turned into errors — quietly: a panic hook that the application
//! installs asks [`expected`] and prints nothing for these, so the user sees the one-line
//! error and no panic message or backtrace.

use std::cell::Cell;

thread_local! {
    static EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside [`catch`] (a panic hook should stay silent then).
pub fn expected() -> bool {
    EXPECTED.with(Cell::get)
}

/// Runs `f`; a panic becomes `Err` with its message.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = EXPECTED.with(|e| e.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    EXPECTED.with(|e| e.set(was));
    r.map_err(|payload| message(payload.as_ref()))
}

/// The text of a panic payload.
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into())
}

/// Lets a closed standard output end the process quietly, as it ends other command-line
/// tools (`tessera classes | head`): Rust ignores `SIGPIPE`, so the next `println!` after the
/// reader left panicked. For command-line runs only — the editor keeps ignoring it, so that a
/// closed terminal cannot take unsaved work with it.
pub fn end_on_closed_stdout() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: resets one signal's disposition to the default before any other thread writes.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_is_an_error_and_the_flag_is_restored() {
        assert!(!expected());
        let r: Result<(), String> = catch(|| {
            assert!(expected());
            panic!("boom {}", 3)
        });
        assert_eq!(r.unwrap_err(), "boom 3");
        assert!(!expected());
        assert_eq!(catch(|| 5).unwrap(), 5);
    }
}
