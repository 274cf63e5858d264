//! The definitions folder: which of its files are `*.yaml` / `*.yml`. The rules engine owns the
//! folder: it loads each file (its `rules:` and its definitions, `mqtter_engine::definitions`)
//! at start and at every reload, and hands the definitions in force to their owner
//! ([`crate::service::DefinitionsOwner`]: the daemon applies them with
//! `mqtter_engine::definitions::sync`).

use std::path::{Path, PathBuf};

/// Every `*.yaml` / `*.yml` file in `dir`, sorted.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}
