//! The interactive editor: document, canvas, mask tools, and the app shell around them
//! (panels, jobs, history, files, projects, settings).

pub mod action;
pub mod app;
pub mod binding;
pub mod canvas;
pub mod command;
pub mod document;
pub mod files;
pub mod history;
pub mod jobs;
pub mod keymap;
pub mod library;
pub mod mask_ops;
pub mod panels;
pub mod project;
pub mod saved;
pub mod segment;
pub mod settings;
pub mod state;
pub mod tools;

pub use app::{EditorApp, EditorOptions, run};
