//! A daemon of the bench's own, for the scenarios that need one started on a folder the bench
//! writes (the rules and things scenarios): `mqtter serve` on 127.0.0.1 port 0, in a fresh
//! temporary folder, killed and removed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::scenario::OwnFolder;

/// A running `mqtter serve` of the bench's own.
pub struct OwnDaemon {
    pub addr: SocketAddr,
    pub pid: u32,
    /// Its rules folder (`rules_dir`), which a scenario may rewrite while it runs.
    pub rules_dir: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl OwnDaemon {
    /// Writes `folder` under a new temporary folder and starts `binary serve` on it; returns
    /// once the daemon listens (its rules and definitions are loaded by then).
    pub fn start(binary: &Path, folder: &OwnFolder, tag: &str) -> anyhow::Result<OwnDaemon> {
        let dir = std::env::temp_dir().join(format!("mqtter-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rules_dir = dir.join("rules");
        std::fs::create_dir_all(&rules_dir)
            .with_context(|| format!("cannot create {}", rules_dir.display()))?;
        for (name, text) in &folder.files {
            let path = rules_dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let rules_str = rules_dir
            .to_str()
            .context("the temporary folder must be a UTF-8 path")?;
        let config = dir.join("mqtter.toml");
        std::fs::write(
            &config,
            format!(
                "# Written by `mqtter bench` for a daemon of its own.\nrules_dir = {rules_str:?}\n{}",
                folder.config
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--ws-listen", "off", "--data"])
            .arg(dir.join("data"))
            .env(
                "RUST_LOG",
                std::env::var("MQTTER_BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} serve", binary.display()))?;
        let stdout = child.stdout.take().context("the daemon's stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        // "mqtter listening mqtt=127.0.0.1:PORT ..."
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mqtt="))
            .and_then(|a| a.parse().ok());
        let pid = child.id();
        let mut daemon = OwnDaemon {
            addr: "127.0.0.1:0".parse().expect("an address"),
            pid,
            rules_dir,
            dir,
            child,
        };
        match (read, addr) {
            (Ok(_), Some(addr)) => daemon.addr = addr,
            _ => bail!(
                "the daemon did not say where it listens (its first line: {:?})",
                line.trim_end()
            ),
        }
        Ok(daemon)
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
