//! [`Rules`]: the running engine as the daemon holds it. It loads the folder, keeps the last good
//! version of every file, swaps the rule set atomically on reload, watches the folder, and
//! answers what happened (status, per-rule counters, traces).
//!
//! **Reload.** The whole folder is read again; a file that loads replaces its last version, a
//! file that fails keeps its last good version (or has no rules if it never loaded) and its
//! error is in the status until it loads again; an empty file (an in-place save half done) keeps
//! its last version; a removed file's rules go. The new set is put in
//! force with one atomic swap, then the definitions of the files in force are handed to their
//! owner (the daemon applies them: `mqtter_engine::definitions::sync`). Each event is matched against the set in force when it arrives
//! and runs with that set, so across a reload no event is lost or handled twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtter_engine::Store;
use mqtter_engine::definitions::{Definitions, FolderFile};
use serde::Serialize;

use crate::diagnostic::Diagnostic;
use crate::events::{Actions, Event, EventSink, Interest};
use crate::exec::{Config, Core, now_ms, worker};
use crate::loader::{self, LoadConfig};
use crate::model::Rule;
use crate::stats::{Counters, Trace};
use crate::world::World;

/// A file's standing, as the status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub file: PathBuf,
    /// Its rules in force (its last good version's, if it fails now).
    pub rules: usize,
    /// Why its current text does not load.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Diagnostic>,
    /// It fails now and its last good version is in force.
    pub last_good: bool,
}

/// What `$SYS/mqtter/rules/status` carries (retained).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// No file fails.
    pub ok: bool,
    pub rules: usize,
    pub files: Vec<FileStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Diagnostic>,
    /// When the rule set in force was loaded, ms since the epoch.
    pub loaded_at: u64,
    /// How long the last reload took (reading and compiling the folder, the swap, the
    /// definitions applied), in ms.
    pub reload_ms: f64,
    pub events: u64,
    /// Events whose rules were not run because the queue was full.
    pub queue_full: u64,
    pub chains_stopped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_stopped: Option<serde_json::Value>,
    pub timers: usize,
}

/// One rule in a listing (`mqtter rules list`, `$SYS/mqtter/rules/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub id: String,
    pub file: PathBuf,
    pub line: u64,
    pub enabled: bool,
    pub mode: &'static str,
    pub account: String,
    pub triggers: Vec<String>,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Default)]
struct FileState {
    good: Option<Vec<Rule>>,
    /// The definitions of the last good version.
    definitions: Option<Arc<Definitions>>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

type StatusListener = Box<dyn Fn(&Status) + Send + Sync>;
type InterestListener = Box<dyn Fn() + Send + Sync>;

/// Whoever applies the folder's definitions (the daemon: `mqtter_engine::definitions::sync`
/// and the effects carried out). Called at every reload, after the rule set is swapped, with
/// every file of the folder (`definitions: None` for one that never loaded); what it returns
/// (declarations not applied) is shown as warnings in the status.
pub type DefinitionsOwner =
    Box<dyn Fn(&[FolderFile<'_>]) -> Vec<mqtter_engine::definitions::Diagnostic> + Send + Sync>;

/// The running rules engine.
pub struct Rules {
    core: Arc<Core>,
    dir: PathBuf,
    load: LoadConfig,
    compiler: rhai::Engine,
    files: Mutex<BTreeMap<PathBuf, FileState>>,
    /// The static check's warnings about loops in the rule set in force.
    loops: Mutex<Vec<Diagnostic>>,
    /// What the rules in force name that the world does not have (at the last reload).
    references: Mutex<Vec<Diagnostic>>,
    loaded_at: std::sync::atomic::AtomicU64,
    /// The last reload's duration, µs.
    reload_us: std::sync::atomic::AtomicU64,
    listener: Mutex<Option<StatusListener>>,
    /// The event kinds asked of the seam ([`EventSink::interest`]): those of the rule set in
    /// force, and during a reload those of the new set too.
    interest: std::sync::atomic::AtomicU32,
    interest_listener: Mutex<Option<InterestListener>>,
    definitions: Option<DefinitionsOwner>,
    /// What the last reload's definitions could not apply or withdraw.
    definition_problems: Mutex<Vec<Diagnostic>>,
    watcher: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Rules {
    /// Start the engine's threads and load `dir`. With a `store`, `after` timers are kept in it
    /// and the ones it holds are set again.
    pub fn start(
        dir: &Path,
        config: Config,
        actions: Arc<dyn Actions>,
        world: Arc<dyn World>,
        store: Option<Arc<dyn Store>>,
    ) -> Arc<Rules> {
        Self::start_owning(dir, config, actions, world, store, None)
    }

    /// As [`Rules::start`], with `definitions` applying the folder's definitions at the first
    /// load and at every reload.
    pub fn start_owning(
        dir: &Path,
        config: Config,
        actions: Arc<dyn Actions>,
        world: Arc<dyn World>,
        store: Option<Arc<dyn Store>>,
        definitions: Option<DefinitionsOwner>,
    ) -> Arc<Rules> {
        let load = LoadConfig {
            account: config.account.clone(),
        };
        let workers = config.workers.max(1);
        let (core, rx) = Core::new(config, actions, world, store);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for n in 0..workers {
            let (core, rx) = (core.clone(), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("rules-{n}"))
                .spawn(move || worker(core, rx, workers));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(err) => tracing::error!("rules: cannot start a worker: {err}"),
            }
        }
        // A virtual clock (`mqtter sim`) goes on to its next deadline once the queue is empty.
        let weak = Arc::downgrade(&core);
        mqtter_engine::clock::clock()
            .add_idle_probe(move || weak.upgrade().is_none_or(|c| c.idle()));
        let timer_core = core.clone();
        if let Ok(handle) = std::thread::Builder::new()
            .name("rules-timers".into())
            .spawn(move || {
                while let Some(items) = timer_core.timers.next_due(now_ms) {
                    for item in items {
                        timer_core.fire(item);
                    }
                }
            })
        {
            threads.push(handle);
        }
        let rules = Arc::new(Rules {
            core,
            dir: dir.to_owned(),
            load,
            compiler: loader::compiler(),
            files: Mutex::default(),
            loops: Mutex::default(),
            references: Mutex::default(),
            loaded_at: 0.into(),
            reload_us: 0.into(),
            listener: Mutex::default(),
            interest: 0.into(),
            interest_listener: Mutex::default(),
            definitions,
            definition_problems: Mutex::default(),
            watcher: Mutex::default(),
            threads: Mutex::new(threads),
        });
        rules.reload();
        // After the rules are in force, so that a timer due already finds its rule.
        match rules.core.timers.restore() {
            Ok(0) => {}
            Ok(n) => tracing::info!("rules: {n} timers set again from the store"),
            Err(err) => tracing::error!("rules: cannot read the stored timers: {err}"),
        }
        rules
    }

    /// Hand the engine one event, as the event seam does (a copy is shared with the workers).
    pub fn on_event(&self, event: &Event) {
        self.core.route(&Arc::new(event.clone()));
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Call `listener` with the status after every reload (for the retained
    /// `$SYS/mqtter/rules/status`); it is called once at once.
    pub fn on_status(&self, listener: impl Fn(&Status) + Send + Sync + 'static) {
        listener(&self.status());
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(listener));
    }

    /// Call `listener` whenever [`EventSink::interest`] changes (the daemon asks its event seam
    /// to refresh the interest of its consumers): before a reload puts in force rules of kinds
    /// not wanted yet, and after it, once kinds no rule wants any more can be dropped.
    pub fn on_interest(&self, listener: impl Fn() + Send + Sync + 'static) {
        *self
            .interest_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(listener));
    }

    /// The event kinds the rules in force can fire on.
    pub fn interest(&self) -> Interest {
        Interest::from_bits(self.interest.load(Ordering::Acquire))
    }

    fn set_interest(&self, bits: u32) {
        if self.interest.swap(bits, Ordering::AcqRel) != bits
            && let Some(listener) = &*self
                .interest_listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        {
            listener();
        }
    }

    /// Read the folder again and put the result in force (see the module's doc).
    pub fn reload(&self) -> Status {
        let started = std::time::Instant::now();
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let (names, readable) = match loader::yaml_files(&self.dir) {
            Ok(names) => (names, true),
            Err(d) => {
                tracing::error!("rules: {d}");
                (Vec::new(), false)
            }
        };
        files.retain(|name, _| names.contains(name));
        for name in &names {
            // An editor that saves in place truncates the file first: an empty file is one
            // being written, and keeps its last version (`rules: []` empties it for good).
            let empty = std::fs::metadata(name).is_ok_and(|m| m.len() == 0);
            if empty && files.get(name).is_some_and(|f| f.good.is_some()) {
                continue;
            }
            let (outcome, diagnostics) =
                loader::load_file(&self.dir, name, &self.compiler, &self.load);
            let state = files.entry(name.clone()).or_default();
            let (errors, warnings) = diagnostics.into_iter().partition(Diagnostic::is_error);
            state.errors = errors;
            state.warnings = warnings;
            if let Some(file) = outcome {
                state.good = Some(file.rules);
                state.definitions = Some(Arc::new(file.definitions));
            }
            for d in state.errors.iter().chain(&state.warnings) {
                tracing::warn!("rules: {d}");
            }
        }
        // Ids unique across files: a later file that repeats one fails (its last good version
        // stays, unless that one repeats it too).
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut rules = Vec::new();
        for (name, state) in files.iter_mut() {
            let Some(good) = &state.good else { continue };
            let clash = good.iter().find_map(|r| seen.get(&*r.id.0).map(|f| (r, f)));
            if let Some((rule, other)) = clash {
                state.errors.push(Diagnostic::error(
                    name,
                    rule.line,
                    1,
                    format!(
                        "rule `{}` is already defined in {}",
                        rule.id,
                        other.display()
                    ),
                ));
                continue;
            }
            for rule in good {
                seen.insert(rule.id.0.to_string(), name.clone());
                rules.push(rule.clone());
            }
        }
        // Which rule can fire which: every cycle is a warning (a chain stops at the limits).
        let loops = crate::check::loop_warnings(&rules);
        for d in &loops {
            tracing::warn!("rules: {d}");
        }
        *self.loops.lock().unwrap_or_else(|p| p.into_inner()) = loops;
        // The seam is asked for the new set's kinds before it is in force (so that no event of
        // a new kind that arrives after the swap is missed), and for the old set's no longer
        // after.
        let wanted = self.core.install_with(rules, |index| {
            let wanted = index.interest().bits();
            self.set_interest(self.interest.load(Ordering::Acquire) | wanted);
            wanted
        });
        self.set_interest(wanted);
        // The definitions in force, after the rules (so that the events of what they change
        // meet the new rules). A folder that cannot be read changes nothing.
        if let Some(owner) = &self.definitions
            && readable
        {
            let folder: Vec<FolderFile<'_>> = files
                .iter()
                .map(|(name, state)| FolderFile {
                    file: name.clone(),
                    definitions: state.definitions.as_deref(),
                })
                .collect();
            let problems: Vec<Diagnostic> = owner(&folder)
                .into_iter()
                .map(|d| Diagnostic::warning(&d.file, d.line, d.column, d.message))
                .collect();
            for d in &problems {
                tracing::warn!("definitions: {d}");
            }
            *self
                .definition_problems
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = problems;
        }
        // What the rules name that the world does not have, now that the definitions are in
        // force: warnings (a rule acting as no account, a thing not claimed yet), since the
        // world changes at run time; the rules stay loaded.
        let references: Vec<Diagnostic> = {
            let set = self.core.set.load();
            crate::check::references(set.rules.iter().map(|l| &l.rule), &*self.core.world)
        }
        .into_iter()
        .map(|d| Diagnostic {
            severity: crate::diagnostic::Severity::Warning,
            ..d
        })
        .collect();
        for d in &references {
            tracing::warn!("rules: {d}");
        }
        *self.references.lock().unwrap_or_else(|p| p.into_inner()) = references;
        // Before the folder's lock is let go, so that a status never pairs the new load with
        // the last one's duration.
        self.loaded_at.store(now_ms(), Ordering::Relaxed);
        self.reload_us.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        drop(files);
        let status = self.status();
        if let Some(listener) = &*self.listener.lock().unwrap_or_else(|p| p.into_inner()) {
            listener(&status);
        }
        status
    }

    /// Watch the folder: every change (debounced: an editor's atomic save, a partial write
    /// completed, a rename, a delete) reloads it.
    pub fn watch(self: &Arc<Self>) -> Result<(), notify::Error> {
        use notify_debouncer_full::{DebounceEventResult, new_debouncer};
        let weak = Arc::downgrade(self);
        let mut debouncer = new_debouncer(
            Duration::from_millis(150),
            None,
            move |result: DebounceEventResult| {
                if let (Ok(events), Some(rules)) = (result, weak.upgrade())
                    && events.iter().any(|e| changes_the_folder(&e.kind))
                {
                    rules.reload();
                }
            },
        )?;
        debouncer.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(debouncer));
        Ok(())
    }

    pub fn status(&self) -> Status {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let core = &self.core;
        let set = core.set.load();
        Status {
            ok: files.values().all(|f| f.errors.is_empty()),
            rules: set.rules.len(),
            files: files
                .iter()
                .map(|(name, f)| FileStatus {
                    file: name.clone(),
                    rules: f.good.as_ref().map_or(0, Vec::len),
                    errors: f.errors.clone(),
                    last_good: !f.errors.is_empty() && f.good.is_some(),
                })
                .collect(),
            warnings: files
                .values()
                .flat_map(|f| f.warnings.clone())
                .chain(self.loops.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .chain(
                    self.references
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                )
                .chain(
                    self.definition_problems
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                )
                .collect(),
            loaded_at: self.loaded_at.load(Ordering::Relaxed),
            reload_ms: (self.reload_us.load(Ordering::Relaxed) / 100) as f64 / 10.0,
            events: core.counters.events.load(Ordering::Relaxed),
            queue_full: core.counters.queue_full.load(Ordering::Relaxed),
            chains_stopped: core.counters.chains_stopped.load(Ordering::Relaxed),
            last_stopped: core
                .last_stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            timers: core.timers.pending(),
        }
    }

    /// Every rule in force with its counters.
    pub fn list(&self) -> Vec<RuleReport> {
        let set = self.core.set.load();
        set.rules
            .iter()
            .map(|l| RuleReport {
                id: l.rule.id.0.to_string(),
                file: l.rule.file.clone(),
                line: l.rule.line,
                enabled: l.rule.options.enabled,
                mode: loader::mode_name(l.rule.options.mode),
                account: l.rule.options.account.to_string(),
                triggers: l.rule.triggers.iter().map(|t| t.describe()).collect(),
                counters: l.state.stats.counters(),
            })
            .collect()
    }

    /// The last traces of rule `id` (kept across reloads; `None` if it was never loaded).
    pub fn traces(&self, id: &str) -> Option<Vec<Trace>> {
        let set = self.core.set.load();
        let loaded = set.rules.iter().find(|l| &*l.rule.id.0 == id)?;
        Some(loaded.state.stats.traces())
    }

    /// Stop the threads (also done on drop).
    pub fn stop(&self) {
        self.watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let workers = threads.len().saturating_sub(1);
        self.core.stop_workers(workers);
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// The daemon adds the engine to its event seam. It asks for the kinds its rules can fire on
/// (from the trigger index), and again after each reload ([`Rules::on_interest`]): a kind no
/// rule wants costs the sources nothing.
impl EventSink for Rules {
    fn interest(&self) -> Interest {
        Rules::interest(self)
    }

    /// The sink: called by the event seam for every event of [`Rules::interest`]'s kinds.
    fn on_event(&self, event: &Arc<Event>) {
        self.core.route(event);
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a watched event can change what the folder holds: a file created, written, renamed
/// or removed. Opening and reading a file (as a reload does) cannot: reloading on those would
/// reload for ever.
fn changes_the_folder(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // An in-place save completed.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any | EventKind::Other => true,
    }
}
