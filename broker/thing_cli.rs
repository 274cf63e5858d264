//! `mqtter thing FILE`: a virtual thing from a reflex file (docs/CLIENT.md, "Reflexes") run
//! against a daemon in real time, printing each command it receives and each thing it does,
//! one line each, until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use mqtter_client::{RealTime, Reflex, ReflexAction, ReflexReport, ThingClient};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::login_args::LoginArgs;

/// `mqtter thing` arguments.
#[derive(clap::Args, Debug)]
pub struct ThingArgs {
    /// The reflex file (YAML; its scripts are found next to it).
    pub file: PathBuf,
    #[command(flatten)]
    pub login: LoginArgs,
    /// The device name (the client id is `THING:DEVICE`).
    #[arg(long, default_value = "thing")]
    pub device: String,
}

/// Run until SIGINT or SIGTERM; then the connection is closed and the status is 0.
pub fn run(args: ThingArgs) -> anyhow::Result<()> {
    let reflex = Reflex::from_file(&args.file)?;
    let login = args.login.resolve(Some(reflex.thing()))?;
    let runtime = crate::login_args::client_runtime()?;
    runtime.block_on(async move {
        let stop = crate::signals::stop_signal();
        let opts = login.options(&args.device);
        let (thing, events) = ThingClient::connect(opts).await?;
        say(&format!(
            "connected as {} to {}:{} ({})",
            login.user,
            login.host,
            login.port,
            args.file.display()
        ));
        let (tx, mut reports) = mpsc::unbounded_channel();
        let runner = thing.clone();
        let running = tokio::spawn(async move {
            reflex
                .run_reported(runner, events, Arc::new(RealTime), tx)
                .await
        });
        tokio::pin!(stop);
        loop {
            tokio::select! {
                report = reports.recv() => match report {
                    Some(report) => say(&line(&report)),
                    None => break,
                },
                _ = &mut stop => break,
            }
        }
        thing.close().await;
        // The runner holds a clone of the thing: its stream need not end by itself.
        running.abort();
        while let Ok(report) = reports.try_recv() {
            say(&line(&report));
        }
        say("stopped");
        Ok(())
    })
}

/// One line on stdout (a closed stdout loses the line, not the thing).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// How a report is printed: `command ID from WHO: BODY`, `ack ID ok RESULT`,
/// `ack ID error: MESSAGE`, `no ack for ID`, `state PATCH`, `event BODY`, `error: WHAT`,
/// `disconnected (WHY); reconnecting in N ms`.
pub fn line(report: &ReflexReport) -> String {
    match report {
        ReflexReport::Received(cmd) => {
            format!("command {} from {}: {}", cmd.id, cmd.from, cmd.body)
        }
        ReflexReport::Did(action) => action_line(action),
        ReflexReport::Disconnected { reason, retry_in } => format!(
            "disconnected ({reason}); reconnecting in {} ms",
            retry_in.as_millis()
        ),
    }
}

fn action_line(action: &ReflexAction) -> String {
    let mut parts = Vec::new();
    if let Some(id) = &action.command_id {
        parts.push(match &action.ack {
            Some(ack) if ack.ok && ack.result.is_null() => format!("ack {id} ok"),
            Some(ack) if ack.ok => format!("ack {id} ok {}", ack.result),
            Some(ack) => match ack.result.get("error").and_then(Value::as_str) {
                Some(message) => format!("ack {id} error: {message}"),
                None => format!("ack {id} error {}", ack.result),
            },
            None => format!("no ack for {id}"),
        });
    }
    if let Some(state) = &action.state {
        parts.push(format!("state {state}"));
    }
    if let Some(event) = &action.event {
        parts.push(format!("event {event}"));
    }
    if let Some(error) = &action.error {
        parts.push(format!("error: {error}"));
    }
    if parts.is_empty() {
        parts.push("nothing to do".into());
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use mqtter_client::Ack;
    use serde_json::json;

    use super::*;

    #[test]
    fn actions_print_one_line_each() {
        let action = ReflexAction {
            command_id: Some("thing:lamp#1".into()),
            ack: Some(Ack::ok(Value::Null)),
            state: Some(json!({"on": true})),
            event: Some(json!({"kind": "switched"})),
            error: None,
        };
        assert_eq!(
            line(&ReflexReport::Did(action)),
            "ack thing:lamp#1 ok\nstate {\"on\":true}\nevent {\"kind\":\"switched\"}"
        );
        let refused = ReflexAction {
            command_id: Some("thing:lamp#2".into()),
            ack: Some(Ack::error("jammed")),
            ..ReflexAction::default()
        };
        assert_eq!(
            line(&ReflexReport::Did(refused)),
            "ack thing:lamp#2 error: jammed"
        );
    }
}
