//! The Tessera editor as a library, so that integration tests can drive the real app struct.
//! The `tessera` binary (command line and editor window) is `main.rs`.

pub mod editor;
