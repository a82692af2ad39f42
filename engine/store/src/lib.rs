//! Tessera's models folder: the catalogue of the official ImageBART releases, downloads that
//! resume and verify, and installing a release (downloaded or from a zip on disk) as a Tessera
//! model folder. The CLI's `tessera models` and the editor's Models window use it; it lives in
//! its own crate so that running a model needs no HTTP or TLS code.

pub mod catalogue;
pub mod download;
pub mod folder;
pub mod install;

pub use catalogue::{Catalogue, Release};
pub use download::{DownloadEvent, DownloadOptions, Downloaded, download};
pub use folder::{Installed, ModelsFolder, Origin};
pub use install::{InstallEvent, InstallOptions, get, import_files};
