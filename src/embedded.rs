//! The `embedded` conformance target: roomlab's own server on a loopback port, with a data directory
//! that survives its restarts, the small quotas the `quota-small` capability promises, and a storage
//! fault point that fails one room's next commit on request (the `fail-commit` capability).

use anyhow::{Context, Result};
use roomlab_conformance::{Target, TargetAction, TargetHook, CAPABILITIES};
use roomlab_server::{Server, ServerConfig};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The secret the embedded target signs tokens with.
const SECRET: &str = "roomlab-embedded-conformance";

/// How long a restart waits for the old server's connections and rooms to close.
const STOP_DEADLINE_MS: u64 = 5_000;

/// A running embedded server.
pub struct Embedded {
    /// The target to hand to the suite.
    pub target: Target,
    state: Arc<Mutex<Option<Running>>>,
    _data: tempfile::TempDir,
}

struct Running {
    server: Server,
    task: tokio::task::JoinHandle<()>,
}

/// The quotas the `quota-small` capability promises.
pub const QUOTAS_SMALL: roomlab_engine::Quotas =
    roomlab_engine::Quotas { free_bytes: 1_000, pro_bytes: 2_000, addon_bytes: 1_000 };

/// The server's settings: `quotas`, and `mutant` planted if named.
fn config(
    data: &std::path::Path,
    quotas: roomlab_engine::Quotas,
    mutant: Option<roomlab_protocol::Mutant>,
) -> ServerConfig {
    let mut config = ServerConfig::new(SECRET);
    config.data = Some(data.to_path_buf());
    config.engine.quotas = quotas;
    config.engine.mutant = mutant;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    config.epoch_ms = now.as_millis() as u64;
    config
}

async fn start(listener: tokio::net::TcpListener, config: ServerConfig) -> Result<Running> {
    let server = Server::new(config)?;
    let task = tokio::spawn(server.clone().serve(listener, STOP_DEADLINE_MS));
    Ok(Running { server, task })
}

async fn stop(running: Running) {
    running.server.shutdown();
    let _ = running.task.await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(STOP_DEADLINE_MS);
    while !running.server.open_rooms().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Embedded {
    /// Starts the server on a free loopback port with the conformance suite's small quotas.
    pub async fn start(mutant: Option<roomlab_protocol::Mutant>) -> Result<Embedded> {
        Embedded::start_with(QUOTAS_SMALL, mutant).await
    }

    /// Starts the server on a free loopback port with `quotas`.
    pub async fn start_with(
        quotas: roomlab_engine::Quotas,
        mutant: Option<roomlab_protocol::Mutant>,
    ) -> Result<Embedded> {
        let data = tempfile::tempdir().context("making a data directory")?;
        let mut config = config(data.path(), quotas, mutant);
        // The rooms whose next commit fails: the `fail-commit` step adds one, its commit takes it.
        let failing: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let taken = failing.clone();
        config.engine.storage_faults = roomlab_engine::StorageFaults::new(move |room| {
            taken.lock().expect("failing rooms").remove(room.as_str())
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(Some(start(listener, config.clone()).await?)));
        let hook_state = state.clone();
        let hook: TargetHook = Arc::new(move |_room| {
            let (state, config) = (hook_state.clone(), config.clone());
            Box::pin(async move {
                let old = state.lock().expect("embedded state").take();
                if let Some(old) = old {
                    stop(old).await;
                }
                // The same port again, so the target's URLs stay valid across the restart.
                let listener =
                    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
                let new = start(listener, config).await.map_err(|e| e.to_string())?;
                *state.lock().expect("embedded state") = Some(new);
                Ok(())
            })
        });
        let name = match mutant {
            Some(mutant) => format!("embedded (mutant {})", mutant.name()),
            None => "embedded".into(),
        };
        let mut target = Target::roomlab(name, addr, SECRET.as_bytes());
        target.capabilities = CAPABILITIES.iter().map(|(name, _)| name.to_string()).collect();
        target.set_restart(Some(TargetAction::Hook(hook)));
        let fail_commit: TargetHook = Arc::new(move |room| {
            failing.lock().expect("failing rooms").insert(room);
            Box::pin(async { Ok(()) })
        });
        target.set_fail_commit(Some(TargetAction::Hook(fail_commit)));
        Ok(Embedded { target, state, _data: data })
    }

    /// Stops the server.
    pub async fn stop(self) {
        let running = self.state.lock().expect("embedded state").take();
        if let Some(running) = running {
            stop(running).await;
        }
    }
}
