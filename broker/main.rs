//! The `mqtter` command: `serve` the daemon, manage `account`s, print the default `config`,
//! `bench` a broker, `check`/`rules`/`sim` rules, and the terminal clients `chat` and `thing`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mqtter::auth::{AccountKind, Accounts};
use mqtter::config::{Config, DEFAULT_TOML, Durability};

#[derive(Parser, Debug)]
#[command(
    name = "mqtter",
    version,
    about = "MQTT 3.1.1/5.0 broker, IM server and automation engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Manage accounts (persons and things) in the store.
    Account {
        #[command(subcommand)]
        action: AccountAction,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Configuration helpers.
    Config {
        /// Print the commented default configuration.
        #[arg(long)]
        print_default: bool,
    },
    /// Load-test a broker (see docs/BENCHMARKS.md).
    Bench(mqtter_bench::BenchArgs),
    /// Stress the store alone: threads, batches, reads, scans, flushes, checked (docs/BENCHMARKS.md).
    BenchStore(mqtter::store_bench::StoreArgs),
    /// Check a rules folder without a broker (docs/RULES.md): every problem with file, line and
    /// column; exit status 1 if there is an error.
    Check {
        /// The folder (`rules_dir`).
        dir: PathBuf,
    },
    /// What a running daemon's rules engine says: `list` (status and counters), `trace RULE`.
    Rules(mqtter::rules_cli::RulesArgs),
    /// Run scenarios (`*.sim.yaml`) against the rules of a folder, on a virtual clock
    /// (docs/SIMULATOR.md); exit status 1 if a step fails.
    Sim(mqtter::sim::SimArgs),
    /// A terminal client for a person: friends, messages, groups, things (docs/CLIENT.md,
    /// "Terminal client"); commands on stdin, one a line (/help lists them).
    Chat(mqtter::chat::ChatArgs),
    /// Run a virtual thing from a reflex file (YAML/Rhai, docs/CLIENT.md "Reflexes"), printing
    /// each command and what it did, until SIGINT or SIGTERM.
    Thing(mqtter::thing_cli::ThingArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Configuration file (TOML); every key has a default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// TCP listener address, e.g. 127.0.0.1:1883 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// WebSocket listener address; "off" for none.
    #[arg(long)]
    ws_listen: Option<String>,
    /// Accept clients without credentials.
    #[arg(long)]
    allow_anonymous: bool,
    /// Store folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// "sync" (acknowledge once durable) or "async" (acknowledge from memory).
    #[arg(long)]
    durability: Option<String>,
}

#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// Store folder (default: the config's `data`, else ./data).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Configuration file to take `data` from.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum AccountAction {
    /// Add an account; the password is read from stdin when not given.
    Add {
        name: String,
        #[arg(long, default_value = "person")]
        kind: AccountKind,
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Remove an account.
    Remove { name: String },
    /// List accounts.
    List,
}

fn main() {
    let cli = Cli::parse();
    // The simulator's output is its report, the terminal clients' their transcript: the daemon
    // or the client library inside them logs only warnings and errors unless RUST_LOG says
    // otherwise.
    let level = if matches!(
        cli.command,
        Command::Sim(_) | Command::Chat(_) | Command::Thing(_)
    ) {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is lost, not reported with
        // `eprintln!`, which would panic the thread that logged.
        .log_internal_errors(false)
        .init();
    if let Err(err) = dispatch(cli) {
        // Not `eprintln!`, which panics when stderr cannot be written (a full disk): the exit
        // status must say 1 whatever happens to the message.
        let mut stderr = std::io::stderr().lock();
        let message = err.to_string();
        let _ = writeln!(stderr, "mqtter: {message}");
        // Errors that already print their cause (a config file's parse error) say it once.
        for cause in err.chain().skip(1) {
            let cause = cause.to_string();
            if !message.contains(&cause) {
                let _ = writeln!(stderr, "  caused by: {cause}");
            }
        }
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config { print_default } => {
            if !print_default {
                bail!("nothing to do: try `mqtter config --print-default`");
            }
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Account { action, store } => account(action, store),
        Command::Check { dir } => {
            let report = mqtter_rules::check_dir(&dir, &mqtter_rules::LoadConfig::default());
            print!("{}", report.render());
            if report.errors() > 0 {
                bail!("{}: {} errors", dir.display(), report.errors());
            }
            Ok(())
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(mqtter_bench::run(args)).map(|_| ())
        }
        Command::BenchStore(args) => mqtter::store_bench::run(args),
        Command::Rules(args) => mqtter::rules_cli::run(args),
        Command::Chat(args) => mqtter::chat::run(args),
        Command::Thing(args) => mqtter::thing_cli::run(args),
        Command::Sim(args) => {
            if !mqtter::sim::run(args)? {
                // The report said what failed; the status says that something did.
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(ws) = args.ws_listen {
        config.ws_listen = if ws == "off" { String::new() } else { ws };
    }
    if args.allow_anonymous {
        config.allow_anonymous = true;
    }
    if let Some(data) = args.data {
        config.data = data;
    }
    if let Some(durability) = args.durability {
        config.durability = match durability.as_str() {
            "sync" => Durability::Sync,
            "async" => Durability::Async,
            other => bail!("--durability must be sync or async, not {other:?}"),
        };
    }
    config.check()?;

    let mut runtime = if config.worker_threads == 1 {
        // One event loop: the tasks of connections whose packets arrive together run in
        // arrival order (the multi-thread scheduler runs the most recently woken first).
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if config.worker_threads > 1 {
            runtime.worker_threads(config.worker_threads);
        }
        runtime
    };
    let runtime = runtime
        .enable_all()
        .thread_name("mqtter-worker")
        .build()
        .context("cannot start the runtime")?;
    let served = runtime.block_on(async move {
        survive_file_size_limit();
        let daemon = mqtter::daemon::Daemon::bind(config).await?;
        let signal = mqtter::signals::stop_signal();
        // One line on stdout that scripts and tests read to find the ports.
        // Not `println!`: stdout on a full disk must not stop the daemon.
        let _ = writeln!(std::io::stdout(), "{}", daemon.listening_line());
        daemon.run(signal).await
    });
    // A store call stuck on the blocking pool (a last flush left behind at the stop) must not
    // keep the process alive: the runtime's threads get a moment, then the process ends.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// A write past the process's file size limit (RLIMIT_FSIZE) raises SIGXFSZ, which kills by
/// default: handled, the write fails with EFBIG instead, which the store treats as a full disk
/// (nothing unwritten is acknowledged). Logged once: the log may be the file at its limit, and
/// each failed write of it raises the signal again.
fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        const SIGXFSZ: i32 = 25;
        match signal(SignalKind::from_raw(SIGXFSZ)) {
            Ok(mut signal) => {
                tokio::spawn(async move {
                    if signal.recv().await.is_some() {
                        tracing::error!(
                            "a write reached the file size limit (SIGXFSZ); the writes past it fail"
                        );
                    }
                    while signal.recv().await.is_some() {}
                });
            }
            Err(err) => tracing::warn!(cause = %err, "cannot handle SIGXFSZ"),
        }
    }
}

fn read_password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(password) = given {
        return Ok(password);
    }
    if std::io::stdin().is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password given (use --password or write it on stdin)");
    }
    Ok(password)
}

fn account(action: AccountAction, store: StoreArgs) -> anyhow::Result<()> {
    let config = load_config(store.config.as_ref())?;
    let data = store.data.unwrap_or(config.data);
    let store = config.store.open(&data).with_context(|| {
        format!(
            "cannot open the store in {} (is a daemon running on it?)",
            data.display()
        )
    })?;
    let accounts = Accounts::new(store.clone());
    match action {
        AccountAction::Add {
            name,
            kind,
            password,
        } => {
            let taken = mqtter::persist::foreign_sessions(&*store, &name)?;
            if !taken.is_empty() {
                bail!(
                    "the client ids {} have stored sessions of clients that are not {name}: an \
                     account {name} would take them over (let them end or expire, or choose \
                     another name)",
                    taken.join(", ")
                );
            }
            let password = read_password(password)?;
            accounts.add(&name, kind, &password, mqtter::message::now_ms())?;
            println!("added {kind:?} account {name}");
        }
        AccountAction::Passwd { name, password } => {
            let password = read_password(password)?;
            accounts.set_password(&name, &password)?;
            println!("password of {name} changed");
        }
        AccountAction::Remove { name } => {
            accounts.remove(&name)?;
            println!("removed {name}");
        }
        AccountAction::List => {
            for (name, record) in accounts.list()? {
                println!("{name}\t{:?}", record.kind);
            }
        }
    }
    Ok(())
}
