//! The definitions folder: reading its `*.yaml` / `*.yml` files and handing each to the engine
//! (`mqtter_engine::definitions`: parsing and applying). The rules engine owns the folder: its
//! `rules:` sections are its own. Definitions are applied once, at start (a reload re-reads rules,
//! not definitions).

use std::path::{Path, PathBuf};

use mqtter_engine::accounts::Accounts;
use mqtter_engine::definitions::{Diagnostic, Report, apply, apply_things, parse};
use mqtter_engine::im::Im;
use mqtter_engine::things::{Effect, Things};

/// Every `*.yaml` / `*.yml` file in `dir`, sorted.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Load every file of `dir` into the accounts and the IM world.
pub fn load_dir(dir: &Path, accounts: &Accounts, im: &Im, now: u64) -> Report {
    load_dir_with_things(dir, accounts, im, None, now).0
}

/// As [`load_dir`], and the things relations (`bind`, `share`, `link`) through the things world
/// when there is one; its effects are for the broker to carry out.
pub fn load_dir_with_things(
    dir: &Path,
    accounts: &Accounts,
    im: &Im,
    things: Option<&Things>,
    now: u64,
) -> (Report, Vec<Effect>) {
    let mut report = Report::default();
    let mut effects = Vec::new();
    let files = match files_in(dir) {
        Ok(files) => files,
        Err(err) => {
            report.diagnostics.push(Diagnostic {
                file: dir.to_owned(),
                line: 0,
                column: 0,
                message: err.to_string(),
            });
            return (report, effects);
        }
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) => {
                report.diagnostics.push(Diagnostic {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                    message: err.to_string(),
                });
                continue;
            }
        };
        match parse(&file, &text) {
            Ok(defs) => {
                apply(&file, &defs, accounts, im, now, &mut report);
                if let Some(things) = things {
                    effects.extend(apply_things(&file, &defs, things, now, &mut report));
                }
                report.files.push(file);
            }
            Err(diagnostic) => report.diagnostics.push(diagnostic),
        }
    }
    (report, effects)
}
