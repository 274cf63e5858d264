//! `mqtter chat`: a terminal client for a person, on the client library (docs/CLIENT.md,
//! "Terminal client"). It connects as one device, prints an overview once the first sync is
//! over (friends and their presence, requests, groups, unread counts), then carries out the
//! lines of stdin one by one while it prints what arrives.
//!
//! - `commands.rs`: the input lines, parsed.
//! - `exec.rs`: carrying them out, in order.
//! - `events.rs`: printing what the stream yields, and the overview.
//! - `render.rs`: the output's shapes and colours.
//! - `state.rs`: unread counts, presence, the current conversation.
//!
//! The end of the input (or `/quit`) ends it once every line before it is done (a message
//! acknowledged by the server, a command answered or timed out); so does SIGINT or SIGTERM,
//! at once. The status is 0 unless the first connection failed.

pub mod commands;
pub mod events;
pub mod exec;
pub mod render;
pub mod state;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use mqtter_client::Client;
use tokio::sync::{mpsc, oneshot};

use crate::login_args::LoginArgs;

/// How long the first sync may take before the chat says it is still waiting for it.
const SYNC_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// `mqtter chat` arguments.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    /// This device's name (the client id is `USER:DEVICE`; keep it stable: the server counts
    /// what each device missed).
    #[arg(long, default_value = "chat")]
    pub device: String,
    /// The local history cache's folder (default: $XDG_DATA_HOME/mqtter/chat, else
    /// ~/.local/share/mqtter/chat, else ./.mqtter-chat).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Plain output, without colours (also when stdout is not a terminal, or NO_COLOR is set).
    #[arg(long)]
    pub no_color: bool,
}

/// Where the history cache goes when `--cache` is not given.
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(data) = non_empty("XDG_DATA_HOME") {
        return PathBuf::from(data).join("mqtter").join("chat");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home)
            .join(".local")
            .join("share")
            .join("mqtter")
            .join("chat");
    }
    PathBuf::from(".mqtter-chat")
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let login = args.login.resolve(None)?;
    let color = !args.no_color
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let out = render::Out { color };
    let cache = args.cache.unwrap_or_else(default_cache_dir);
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot make the cache folder {}", cache.display()))?;
    let runtime = crate::login_args::client_runtime()?;
    runtime.block_on(async move {
        let stop = crate::signals::stop_signal();
        let opts = login.options(&args.device).cache_dir(&cache);
        let (client, mut events) = Client::connect(opts)
            .await
            .with_context(|| format!("{}:{} as {}", login.host, login.port, login.user))?;
        out.notice(&format!(
            "connected to {}:{} as {} (device {})",
            login.host, login.port, login.user, args.device
        ));
        let state = Arc::new(Mutex::new(state::State::new(&login.user)));
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut printer = events::Printer {
            client: client.clone(),
            state: state.clone(),
            out,
            ready: Some(ready_tx),
        };
        let runner = exec::Runner {
            client: client.clone(),
            state,
            out,
        };
        let lines = read_stdin();
        let running = runner.run(lines, ready_rx);
        // A person's device is synced at once; no sync at all means another kind of account.
        let quiet = tokio::time::sleep(SYNC_PATIENCE);
        let mut warned = false;
        tokio::pin!(running, stop, quiet);
        loop {
            tokio::select! {
                _ = &mut quiet, if !warned => {
                    warned = true;
                    if !printer.is_ready() {
                        out.error(&format!(
                            "no sync from the server after {} s: is {} a person's account? \
                             (still waiting)",
                            SYNC_PATIENCE.as_secs(),
                            login.user
                        ));
                    }
                }
                event = events.next() => match event {
                    Some(event) => printer.handle(event),
                    None => break,
                },
                _ = &mut running => break,
                _ = &mut stop => break,
            }
        }
        // Direct channels upload what was said over them, then the DISCONNECT.
        client.close().await;
        Ok(())
    })
}

/// The lines of stdin, read on a thread of their own (a blocked read never holds up the exit).
fn read_stdin() -> mpsc::UnboundedReceiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let failed = line.is_err();
            if tx.send(line).is_err() || failed {
                return;
            }
        }
    });
    rx
}
