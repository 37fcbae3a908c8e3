//! The processing thread: the single writer's loop over what the ingest stage (or cluster
//! mode's partitions) forwards, with a flusher thread beside it, handing each group's acks to
//! the acker only once the group is durable.

use super::{App, CoreError};
use crate::ingest::mqtt::{self, Inbound, Publish};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Starts the processing thread on the ingest stage's `feed`, committing up to `group`
/// messages at once (`ingest.commit_group`). It stops when the feed closes (every source has
/// stopped forwarding, at shutdown), after a last checkpoint.
pub fn spawn(
    app: Arc<App>,
    feed: crate::ingest::Feed,
    group: usize,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("forewarn-processor".into())
        .spawn(move || run(app, feed.inbound, feed.acks, group.max(1), shutdown, rt))
}

/// The single writer of ingest: takes what has arrived (up to `group` messages), processes it
/// and hands its effects, one atomic batch, to the store without applying it
/// ([`Store::defer`](crate::store::Store::defer)), then hands the group to the flusher, which
/// applies the batches waiting (sled's share of a commit), makes them durable and only then
/// passes the groups' publishes to the acker. The flusher takes every group waiting at once
/// (one fsync for all of them), and the next group is processed while it applies and flushes:
/// the two cores work at once. Every other store operation applies the deferred batches first,
/// so nothing written later (an API transition, a checkpoint) is overwritten by an older batch.
///
/// A failed commit or flush is retried with backoff (nothing is acknowledged meanwhile, so the
/// channel fills and the broker holds back): memory is rebuilt from the store, the groups the
/// flusher could not make durable are processed again, oldest first, each flushed before its
/// acks. A deferred batch that cannot be applied is dropped with every batch after it (the
/// store's epoch moves): every group handed over before is handed back, as for a failed
/// flush. On shutdown what is not durable is left unacknowledged for the broker to redeliver.
fn run(
    app: Arc<App>,
    mut rx: mpsc::Receiver<Inbound>,
    acks: mpsc::UnboundedSender<Vec<Publish>>,
    group: usize,
    shutdown: CancellationToken,
    rt: tokio::runtime::Handle,
) {
    // The idle wake-up's timer is the runtime's.
    let _rt = rt.enter();
    // Groups handed to the flusher and not yet acknowledged or handed back.
    let in_flusher = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Unbounded: at most the broker's in-flight window is ever unacknowledged.
    // A group, what it gives the history archive once durable, and the store's epoch before
    // it was processed (its batches count only if that has not moved by its flush).
    type Applied = (Vec<Inbound>, Vec<crate::archive::Record>, u64);
    let (to_flush, flush_rx) = std::sync::mpsc::channel::<Applied>();
    let (failed_tx, failed_rx) = std::sync::mpsc::channel::<Vec<Inbound>>();
    let flusher = std::thread::Builder::new()
        .name("forewarn-flusher".into())
        .spawn({
            let (app, acks, in_flusher) = (app.clone(), acks.clone(), in_flusher.clone());
            move || {
                while let Ok(first) = flush_rx.recv() {
                    let mut groups = vec![first];
                    groups.extend(flush_rx.try_iter());
                    let n = groups.len();
                    let flushed = app.store.flush();
                    let epoch = app.store.epoch();
                    let (durable, lost): (Vec<_>, Vec<_>) = groups
                        .into_iter()
                        .partition(|(_, _, e)| flushed.is_ok() && *e == epoch);
                    for (g, archived, _) in durable {
                        app.archive_durable(archived);
                        let _ = acks.send(g.into_iter().map(|m| m.publish).collect());
                    }
                    if !lost.is_empty() {
                        // A commit that did not reach the disk.
                        app.metrics.commit_failures.inc();
                        app.set_store_writable(false);
                        match &flushed {
                            Err(e) => tracing::error!(
                                "flush of {n} group(s) failed, not acknowledged: {e}"
                            ),
                            Ok(()) => tracing::error!(
                                "{} group(s) not acknowledged: their batches were dropped",
                                lost.len()
                            ),
                        }
                        for (g, _, _) in lost {
                            let _ = failed_tx.send(g);
                        }
                    }
                    in_flusher.fetch_sub(n, Ordering::SeqCst);
                }
            }
        });
    let flusher = match flusher {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(
                "cannot start the flusher thread ({e}): every group is flushed in turn"
            );
            None
        }
    };
    // Waits until the flusher has acknowledged or handed back everything it holds; returns what
    // it handed back, oldest first.
    let settle = |failed_rx: &std::sync::mpsc::Receiver<Vec<Inbound>>| {
        while in_flusher.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        failed_rx.try_iter().collect::<Vec<_>>()
    };
    let mut buf: Vec<Inbound> = Vec::with_capacity(group);
    // The store's epoch this thread last knew: when it moves, deferred batches were dropped.
    let mut epoch = app.store.epoch();
    loop {
        // A group, or (every 100 ms while idle) a look at what the flusher handed back.
        let first = match rt.block_on(tokio::time::timeout(Duration::from_millis(100), rx.recv())) {
            Ok(Some(m)) => Some(m),
            Ok(None) => break,
            Err(_) => None,
        };
        if let Some(first) = first {
            buf.push(first);
            while buf.len() < group {
                match rx.try_recv() {
                    Ok(m) => buf.push(m),
                    Err(_) => break,
                }
            }
        }
        let mut redo = failed_rx.try_iter().collect::<Vec<_>>();
        if !redo.is_empty() || app.store.epoch() != epoch {
            // Whatever the flusher holds from before is handed back too: redone in order,
            // before anything newer is applied.
            redo.extend(settle(&failed_rx));
            app.distrust_memory();
            app.set_store_writable(false);
            for g in redo {
                commit_sync(&app, g, &acks, &shutdown);
            }
            epoch = app.store.epoch();
        }
        if buf.is_empty() {
            continue;
        }
        if flusher.is_none() {
            commit_sync(&app, std::mem::take(&mut buf), &acks, &shutdown);
            continue;
        }
        match app.process_group_applied(&buf) {
            Ok(_) => {
                app.set_store_writable(true);
                in_flusher.fetch_add(1, Ordering::SeqCst);
                let archived = app.take_unflushed_archive();
                if let Err(back) = to_flush.send((std::mem::take(&mut buf), archived, epoch)) {
                    // The flusher is gone: this group is already deferred, flush it here.
                    in_flusher.fetch_sub(1, Ordering::SeqCst);
                    let (g, archived, e) = back.0;
                    let flushed = app.store.flush().and_then(|()| {
                        if app.store.epoch() == e {
                            Ok(())
                        } else {
                            Err(crate::store::StoreError::Discarded)
                        }
                    });
                    match flushed {
                        Ok(()) => {
                            app.archive_durable(archived);
                            let _ = acks.send(g.into_iter().map(|m| m.publish).collect());
                        }
                        Err(e) => {
                            tracing::error!("flush failed, not acknowledged: {e}");
                            app.distrust_memory();
                            commit_sync(&app, g, &acks, &shutdown);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    "commit of {} messages failed, not acknowledged: {e}",
                    buf.len()
                );
                // What the flusher could not make durable is older: it goes first, on memory
                // rebuilt from the store (it holds those groups' effects).
                let redo = settle(&failed_rx);
                if !redo.is_empty() {
                    app.distrust_memory();
                }
                for g in redo {
                    commit_sync(&app, g, &acks, &shutdown);
                }
                commit_sync(&app, std::mem::take(&mut buf), &acks, &shutdown);
                epoch = app.store.epoch();
            }
        }
    }
    drop(to_flush);
    if let Some(f) = flusher {
        let _ = f.join();
    }
    // Intake has stopped: leave every device's whole state on disk (a checkpoint), so the next
    // start has nothing to replay.
    if let Err(e) = app.checkpoint() {
        tracing::warn!(
            "no checkpoint at shutdown ({e}): the step log is replayed at the next start"
        );
    }
}

/// Processes a group and commits it flushed, retrying with backoff until it succeeds (reopening
/// the store after an I/O error), then hands its publishes to the acker. On shutdown the group
/// is left unacknowledged for the broker to redeliver.
fn commit_sync(
    app: &App,
    mut buf: Vec<Inbound>,
    acks: &mpsc::UnboundedSender<Vec<Publish>>,
    shutdown: &CancellationToken,
) {
    let mut backoff = mqtt::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match app.process_group(&buf) {
            Ok(_) => {
                app.set_store_writable(true);
                let _ = acks.send(buf.drain(..).map(|m| m.publish).collect());
                return;
            }
            Err(e) => {
                if matches!(e, CoreError::Store(_)) {
                    app.set_store_writable(false);
                }
                tracing::error!(
                    "commit of {} messages failed, not acknowledged: {e}",
                    buf.len()
                );
                if shutdown.is_cancelled() {
                    return;
                }
                std::thread::sleep(backoff.next_delay());
                if let CoreError::Store(se) = &e {
                    if crate::store::Store::is_io_error(se) {
                        // sled refuses everything after an I/O error until reopened.
                        match app.store.reopen() {
                            Ok(()) => tracing::warn!("store reopened after an I/O error"),
                            Err(e) => tracing::error!("store not writable yet: {e}"),
                        }
                    }
                }
            }
        }
    }
}
