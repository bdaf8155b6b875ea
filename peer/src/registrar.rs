//! Keeps this peer registered at the index: login, whole list, heartbeats,
//! additions and removals, and reconnection with backoff when the index goes
//! away (its restart loses every registration, so we register again).

use std::collections::HashMap;
use std::time::Duration;

use common::id::FileId;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::limits::MAX_FILES_PER_BATCH;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::index_client::{IndexClient, IndexError};
use crate::library::Library;

/// Where the registration stands, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    Connecting,
    /// Registered; the address the index publishes for us and how many files.
    Registered {
        addr: String,
        files: usize,
    },
    /// Refused for good (for example a nickname clash); not retried.
    Refused(String),
}

pub struct RegistrarConfig {
    pub index: String,
    pub login: Login,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Runs until `shutdown`. Refusals that retrying cannot fix end the loop.
pub async fn run(
    config: RegistrarConfig,
    library: Library,
    state: watch::Sender<RegistrationState>,
    shutdown: CancellationToken,
) {
    let mut backoff = config.backoff_min;
    // A clash on the first login is someone else's nickname: give up. Once we
    // have been registered, a clash is our own old session whose lease has
    // not run out yet (a half-open connection): wait for it.
    let mut registered_once = false;
    loop {
        state.send_replace(RegistrationState::Connecting);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session(&config, &library, &state, &mut backoff, &mut registered_once) => r,
        };
        let Err(e) = result else { return };
        if let IndexError::Refused {
            code: common::index_proto::ErrorCode::NickTaken,
            message,
        } = &e
        {
            if registered_once {
                warn!(%message, retry_in = ?backoff, "our nickname is still held by our previous session; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.backoff_max);
                continue;
            }
            warn!(%message, "the index refused our nickname; pick another with --nick");
            state.send_replace(RegistrationState::Refused(message.clone()));
            shutdown.cancelled().await;
            return;
        }
        warn!(index = %config.index, error = %e, retry_in = ?backoff, "lost the index; will register again");
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

async fn session(
    config: &RegistrarConfig,
    library: &Library,
    state: &watch::Sender<RegistrationState>,
    backoff: &mut Duration,
    registered_once: &mut bool,
) -> Result<(), IndexError> {
    let mut client = IndexClient::connect(&config.index).await?;
    let (addr, ttl) = match client
        .request(&IndexRequest::Login(config.login.clone()))
        .await?
    {
        IndexResponse::Welcome { addr, lease_ttl_ms } => {
            (addr, Duration::from_millis(lease_ttl_ms.max(300)))
        }
        other => return Err(IndexError::Unexpected(format!("{other:?}"))),
    };
    *registered_once = true;
    let mut changes = library.subscribe();
    changes.mark_changed();
    let mut registered: HashMap<FileId, SharedFile> = HashMap::new();
    let mut registered_partial: HashMap<FileId, SharedFile> = HashMap::new();
    let mut heartbeat = tokio::time::interval(ttl / 3);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut announced = false;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                sync_listing(&mut client, library, &mut registered, &mut registered_partial).await?;
                if !announced {
                    info!(%addr, files = registered.len(), "registered at the index");
                    announced = true;
                    *backoff = config.backoff_min;
                }
                state.send_replace(RegistrationState::Registered { addr: addr.clone(), files: registered.len() });
            }
            _ = heartbeat.tick() => {
                client.request(&IndexRequest::Heartbeat).await?;
            }
            // Notice at once when the index goes away, not at the next heartbeat.
            e = client.closed() => return Err(e),
        }
    }
}

/// Sends the difference between what the index has and what we share.
async fn sync_listing(
    client: &mut IndexClient,
    library: &Library,
    registered: &mut HashMap<FileId, SharedFile>,
    registered_partial: &mut HashMap<FileId, SharedFile>,
) -> Result<(), IndexError> {
    let current = library.listing();
    let current_partial = library.partial_listing();
    // A partial file that became complete is upgraded by its AddFiles, not removed.
    let mut removed: Vec<FileId> = registered
        .keys()
        .chain(registered_partial.keys())
        .filter(|id| !current.contains_key(id) && !current_partial.contains_key(id))
        .copied()
        .collect();
    removed.sort();
    removed.dedup();
    let added_partial: Vec<SharedFile> = current_partial
        .values()
        .filter(|f| !registered_partial.contains_key(&f.id))
        .cloned()
        .collect();
    let added: Vec<SharedFile> = current
        .values()
        .filter(|f| registered.get(&f.id).is_none_or(|r| r.name != f.name))
        .cloned()
        .collect();
    // Pipelined: every batch goes out before the first answer is read.
    let mut pending = 0;
    for batch in removed.chunks(MAX_FILES_PER_BATCH) {
        client
            .queue(&IndexRequest::RemoveFiles {
                ids: batch.to_vec(),
            })
            .await?;
        pending += 1;
    }
    for batch in added.chunks(MAX_FILES_PER_BATCH) {
        client
            .queue(&IndexRequest::AddFiles {
                files: batch.to_vec(),
            })
            .await?;
        pending += 1;
    }
    for batch in added_partial.chunks(MAX_FILES_PER_BATCH) {
        client
            .queue(&IndexRequest::AddPartial {
                files: batch.to_vec(),
            })
            .await?;
        pending += 1;
    }
    client.flush().await?;
    for _ in 0..pending {
        client.receive().await?;
    }
    *registered = current;
    *registered_partial = current_partial;
    Ok(())
}
