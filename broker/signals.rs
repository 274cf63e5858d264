//! The stop signals of the daemon and the terminal clients: SIGTERM and SIGINT (Ctrl-C).

/// Resolves at SIGTERM or SIGINT (Ctrl-C). The handlers are installed by this call, not when
/// the future is first polled: the daemon must not die of a SIGTERM that arrives once it has
/// said it is listening but before its serving loop started.
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        if let Err(err) = &term {
            tracing::warn!(cause = %err, "cannot handle SIGTERM");
        }
        async move {
            let wait = |found: std::io::Result<tokio::signal::unix::Signal>| async move {
                match found {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
