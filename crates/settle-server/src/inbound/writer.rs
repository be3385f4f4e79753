//! The inbox writer: group commit of accepted webhooks, like the ledger writer.
//!
//! A verified webhook does not open its own transaction. Its handler queues the inbox entry; a
//! writer task takes everything queued (up to [`BATCH_MAX`] entries), inserts them in one
//! statement per batch (PostgreSQL: one `INSERT … SELECT FROM UNNEST … ON CONFLICT DO
//! NOTHING`), commits once and answers each handler whether its entry was new or a duplicate.
//! The handler answers 200 only after that commit: an accepted webhook is durable. Under load
//! one commit serves hundreds of webhooks; alone, a webhook costs one short transaction.
//!
//! If a batch's transaction fails, each of its entries is retried alone, so one entry's
//! failure never fails another's.

use std::sync::Arc;

use settle_domain::inbound::InboxEntry;
use settle_store::{Engine, Mode, Scope, Store};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::ApiError;

/// Most entries one commit gathers.
pub const BATCH_MAX: usize = 1_000;
/// Most entries waiting for a writer before handlers wait.
pub const QUEUE_MAX: usize = 16_384;

type Answer = Result<bool, ApiError>;

struct Insert {
    entry: InboxEntry,
    reply: oneshot::Sender<Answer>,
}

#[derive(Clone)]
pub struct InboxWriter {
    queue: mpsc::Sender<Insert>,
}

impl InboxWriter {
    /// Starts the writer tasks: two on PostgreSQL (one gathers while the other commits), one on
    /// SQLite (whose single writer connection would serialize them anyway). They stop when every
    /// `InboxWriter` clone is dropped and the queue is drained.
    pub fn start(store: Arc<dyn Store>) -> (InboxWriter, Vec<tokio::task::JoinHandle<()>>) {
        let writers = match store.engine() {
            Engine::Postgres => 2,
            Engine::Sqlite => 1,
        };
        let (queue, rx) = mpsc::channel(QUEUE_MAX);
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..writers)
            .map(|_| tokio::spawn(run(store.clone(), rx.clone())))
            .collect();
        (InboxWriter { queue }, handles)
    }

    /// Stores `entry` unless its event is stored already; `true` when it was new.
    pub async fn insert(&self, entry: InboxEntry) -> Result<bool, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Insert { entry, reply })
            .await
            .map_err(|_| ApiError::Unavailable)?;
        answer.await.map_err(|_| ApiError::Unavailable)?
    }
}

async fn run(store: Arc<dyn Store>, rx: Arc<Mutex<mpsc::Receiver<Insert>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        let entries: Vec<InboxEntry> = batch.iter().map(|i| i.entry.clone()).collect();
        match commit(store.as_ref(), &entries).await {
            Ok(flags) => {
                for (insert, new) in batch.into_iter().zip(flags) {
                    let _ = insert.reply.send(Ok(new));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(insert) = batch.into_iter().next() {
                    let _ = insert.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, entries = batch.len(), "inbox batch failed; retrying its entries one by one");
                for insert in batch {
                    let answer = commit(store.as_ref(), std::slice::from_ref(&insert.entry))
                        .await
                        .and_then(|flags| {
                            flags
                                .first()
                                .copied()
                                .ok_or_else(|| ApiError::Internal("inbox insert answered nothing".into()))
                        });
                    let _ = insert.reply.send(answer);
                }
            }
        }
    }
}

async fn commit(store: &dyn Store, entries: &[InboxEntry]) -> Result<Vec<bool>, ApiError> {
    let mut tx = store.begin(Scope::System, Mode::Write).await?;
    let flags = tx.insert_inbox(entries).await?;
    tx.commit().await?;
    if flags.len() != entries.len() {
        return Err(ApiError::Internal("inbox insert answered a different count".into()));
    }
    Ok(flags)
}
