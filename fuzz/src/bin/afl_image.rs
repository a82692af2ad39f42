//! AFL++ harness for [`tessera_fuzz::image`] (built by `scripts/fuzz.sh`). Panics the
//! readers catch themselves are not crashes (`fuzz_nohook`); any other panic is.

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        tessera_fuzz::image(data);
    });
}
