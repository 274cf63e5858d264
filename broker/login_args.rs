//! How the terminal clients (`mqtter chat`, `mqtter thing`) log in: the broker's address, the
//! account, and its password (given, from `MQTTER_PASSWORD`, or asked for on a terminal).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};

/// The `--broker`, `-u/--user` and `-P/--password` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct LoginArgs {
    /// The broker: mqtt://host:port (or host:port; the port defaults to 1883).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// The account to log in as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Its password (else MQTTER_PASSWORD, else asked for when stdin is a terminal).
    #[arg(short = 'P', long, env = "MQTTER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// A resolved login.
#[derive(Debug, Clone)]
pub struct Login {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl Login {
    /// The client library's options for this login as device `device`.
    pub fn options(&self, device: &str) -> mqtter_client::Options {
        mqtter_client::Options::new(&self.host, self.port, &self.user, &self.password, device)
    }
}

/// The runtime of a terminal client (`mqtter chat`, `mqtter thing`): two workers.
pub fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

impl LoginArgs {
    /// The address, the account (`default_user` when `-u` is not given) and the password.
    pub fn resolve(&self, default_user: Option<&str>) -> anyhow::Result<Login> {
        let (host, port) = crate::sim::external::parse_url(&self.broker)?;
        let Some(user) = self.user.clone().or(default_user.map(str::to_owned)) else {
            bail!("no account given: use -u/--user NAME");
        };
        let password = match &self.password {
            Some(password) => password.clone(),
            None => ask_password(&user)?,
        };
        Ok(Login {
            host,
            port,
            user,
            password,
        })
    }
}

/// Ask on the terminal, without echo; refused when stdin is not a terminal (a script must give
/// the password with `-P` or `MQTTER_PASSWORD`: its stdin is for commands).
fn ask_password(user: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("no password for {user}: use -P/--password or MQTTER_PASSWORD");
    }
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "password for {user}: ");
    let _ = stderr.flush();
    let echo = EchoOff::new();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    drop(echo);
    let _ = writeln!(stderr);
    read.context("cannot read the password")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password given");
    }
    Ok(password)
}

/// The terminal's echo turned off while it lives (restored on drop).
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr writes a termios for fd 0 into the zeroed struct; tcsetattr reads one.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return EchoOff { saved: None };
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &term) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}
