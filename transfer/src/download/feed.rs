//! A download's stream of sources.
//!
//! Every download learns who offers its file through one [`SourceLookup`]:
//! the sources it starts with come in the [`super::DownloadRequest`], and
//! the lookup is asked again every [`SourceLookup::every`] while the
//! download runs (an index lookup, a flooding search, the one server of
//! the client-server mode), so that it learns of peers that joined and of
//! sources that left and came back (churn). A lookup that is never asked
//! again ([`StartOnly`]) ends the stream at once: the sources given at the
//! start are then all there is, and a source that left is not waited for.
//! The engine ([`super::download`]) starts a source task for each new
//! address and tries again, after a backoff, an address whose task ended
//! without a ban when the stream offers it again.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How a download learns who offers its file now (an index lookup, a
/// flooding search, or a fixed server).
pub trait SourceLookup: Send + 'static {
    /// The addresses offering the file now; `None` when the lookup failed
    /// (the download keeps the sources it has, and the next call may
    /// reconnect).
    fn sources(&mut self) -> impl Future<Output = Option<Vec<String>>> + Send;

    /// How long to wait before each lookup (asked before each one, so a
    /// lookup may space its refreshes out); `None`: never looked up (the
    /// stream ends with the sources the download started with).
    fn every(&self) -> Option<Duration>;
}

/// The sources the download starts with and no others (a download from
/// addresses given by hand, a test's fixed sources).
pub struct StartOnly;

impl SourceLookup for StartOnly {
    async fn sources(&mut self) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    fn every(&self) -> Option<Duration> {
        None
    }
}

/// Always the same sources (client-server mode: the one server), offered
/// again every `every` so that a server that went away or was busy is
/// tried again when it is back.
pub struct FixedSources {
    pub sources: Vec<String>,
    pub every: Duration,
}

impl SourceLookup for FixedSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        Some(self.sources.clone())
    }

    fn every(&self) -> Option<Duration> {
        Some(self.every)
    }
}

/// Addresses of sources found while a download runs, until the stream ends.
pub(super) type SourceFeed = mpsc::Receiver<Vec<String>>;

/// The task that asks a lookup again and again while a download runs;
/// stopped (and awaited) by [`Refresher::stop`].
pub(super) struct Refresher {
    task: JoinSet<()>,
    stop: CancellationToken,
}

impl Refresher {
    /// Starts asking `lookup` (unless it is never asked: then the stream
    /// is `None`, ended).
    pub(super) fn start<L: SourceLookup>(
        lookup: L,
        shutdown: &CancellationToken,
    ) -> (Refresher, Option<SourceFeed>) {
        let stop = shutdown.child_token();
        let mut task = JoinSet::new();
        let feed = lookup.every().map(|every| {
            let (tx, rx) = mpsc::channel(4);
            task.spawn(refresh(lookup, every, tx, stop.clone()));
            rx
        });
        (Refresher { task, stop }, feed)
    }

    pub(super) async fn stop(mut self) {
        self.stop.cancel();
        self.task.shutdown().await;
    }
}

async fn refresh<L: SourceLookup>(
    mut lookup: L,
    mut every: Duration,
    feed: mpsc::Sender<Vec<String>>,
    stop: CancellationToken,
) {
    loop {
        // Asked each time: a lookup may space its refreshes out.
        every = lookup.every().unwrap_or(every);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let found = tokio::select! {
            _ = stop.cancelled() => return,
            found = lookup.sources() => found,
        };
        match found {
            Some(addrs) => {
                if feed.send(addrs).await.is_err() {
                    return;
                }
            }
            None => debug!("source refresh failed; keeping the sources we have"),
        }
    }
}
