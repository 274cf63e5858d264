//! Which backend holds a data folder, and opening it: `Engine`, [`open`].
//!
//! Layout of a data folder: `fjall/` (fjall), `store.redb` (redb), or sled's own files at the
//! top (`conf`, `db`, `blobs/`, `snap.*`: where every version before the choice of engines kept
//! its store). The file `store-engine` names the engine that wrote the folder; a folder is
//! never opened with another engine than the one it names (a clear error says so).
//!
//! A folder that an older version wrote (sled's files and no `store-engine`) opened with another
//! engine is migrated at start: every pair of every space is copied into the new store, which is
//! then flushed, `store-engine` is written, and sled's files move to `sled-migrated/` (kept, not
//! deleted; remove them once the new store has proved itself). A crash during the copy leaves
//! sled's files in place and no `store-engine`, so the next start copies again (the copy only
//! puts, so doing it twice is harmless).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::{Batch, Space, Store, StoreError};
use crate::{FjallStore, RedbStore, SledStore};

/// The store's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// fjall 3: an LSM tree with a journal; one fsync of the journal per flush.
    Fjall,
    /// redb 4: a copy-on-write B-tree in one file; non-durable commits, one durable per flush.
    /// The default: it measured best on the durable benchmarks and the stress test
    /// (docs/BENCHMARKS.md, "The store's engines").
    #[default]
    Redb,
    /// sled 0.34: the engine of older versions (known to deadlock under load, sled#1412).
    Sled,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fjall => "fjall",
            Engine::Redb => "redb",
            Engine::Sled => "sled",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Engine::Fjall, Engine::Redb, Engine::Sled]
            .into_iter()
            .find(|engine| engine.name() == name)
    }
}

/// The file naming the engine of a data folder.
pub const ENGINE_FILE: &str = "store-engine";

/// Where sled's files go once migrated.
pub const SLED_MIGRATED: &str = "sled-migrated";

/// sled's files at the top of a data folder.
fn sled_files(data: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "conf" || n == "db" || n == "blobs" || n.starts_with("snap."))
        })
        .collect()
}

fn refuse(message: String) -> StoreError {
    StoreError::Refused(message)
}

/// Open the store of `data` with `engine`, migrating a folder of an older version (see the
/// module doc). Refuses a folder that another engine wrote.
pub fn open(data: &Path, engine: Engine) -> Result<Arc<dyn Store>, StoreError> {
    std::fs::create_dir_all(data)?;
    let marker = data.join(ENGINE_FILE);
    let named = match std::fs::read_to_string(&marker) {
        Ok(text) => {
            let name = text.trim();
            Some(Engine::parse(name).ok_or_else(|| {
                refuse(format!(
                    "{} names an unknown store engine {name:?} (this version knows fjall, redb, sled)",
                    marker.display()
                ))
            })?)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err.into()),
    };
    let legacy = sled_files(data);
    match named {
        Some(named) if named != engine => {
            return Err(refuse(format!(
                "the data folder {} holds a {} store but the configuration asks for {} \
                 ([store] engine): set engine = \"{}\", or point `data` at another folder",
                data.display(),
                named.name(),
                engine.name(),
                named.name()
            )));
        }
        Some(_) => {}
        None if !legacy.is_empty() && engine != Engine::Sled => {
            migrate_from_sled(data, engine)?;
        }
        None => {
            if engine != Engine::Sled && has_store_of_another(data, engine) {
                return Err(refuse(format!(
                    "the data folder {} holds a store of another engine and no {ENGINE_FILE} file: \
                     refusing to guess",
                    data.display()
                )));
            }
            write_marker(&marker, engine)?;
        }
    }
    let store = open_engine(data, engine)?;
    if named.is_some() && engine != Engine::Sled && !legacy.is_empty() {
        // A migration that stopped after writing the marker: finish moving sled's files.
        move_sled_files(data)?;
    }
    Ok(store)
}

fn has_store_of_another(data: &Path, engine: Engine) -> bool {
    match engine {
        Engine::Fjall => data.join("store.redb").exists(),
        Engine::Redb => data.join("fjall").exists(),
        Engine::Sled => false,
    }
}

fn open_engine(data: &Path, engine: Engine) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match engine {
        Engine::Fjall => Arc::new(FjallStore::open(data.join("fjall"))?),
        Engine::Redb => Arc::new(RedbStore::open(data.join("store.redb"))?),
        Engine::Sled => Arc::new(SledStore::open(data)?),
    })
}

fn write_marker(marker: &Path, engine: Engine) -> Result<(), StoreError> {
    let tmp = marker.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", engine.name()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, marker)?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn migrate_from_sled(data: &Path, engine: Engine) -> Result<(), StoreError> {
    tracing::warn!(
        data = %data.display(),
        to = engine.name(),
        "this data folder was written by an older version (sled): migrating its store"
    );
    let pairs = {
        let from = SledStore::open(data)?;
        let to = open_engine(data, engine)?;
        let mut pairs = 0usize;
        for space in Space::ALL {
            let mut batch = Batch::new();
            for (key, value) in from.scan_prefix(space, b"")? {
                batch.put(space, key, value);
                pairs += 1;
                if batch.len() >= 10_000 {
                    to.apply(std::mem::take(&mut batch))?;
                }
            }
            to.apply(batch)?;
        }
        to.flush()?;
        pairs
    };
    write_marker(&data.join(ENGINE_FILE), engine)?;
    move_sled_files(data)?;
    tracing::warn!(
        pairs,
        kept_in = %data.join(SLED_MIGRATED).display(),
        "store migrated from sled; its old files are kept"
    );
    Ok(())
}

fn move_sled_files(data: &Path) -> Result<(), StoreError> {
    let kept = data.join(SLED_MIGRATED);
    std::fs::create_dir_all(&kept)?;
    for path in sled_files(data) {
        if let Some(name) = path.file_name() {
            std::fs::rename(&path, kept.join(name))?;
        }
    }
    Ok(())
}
