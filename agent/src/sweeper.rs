//! The agent's own housekeeping on a timer: what no request triggers.
//! Retention whose `maxAge` ran out while no new checkpoint came, partial
//! replicas whose sender died and never resumed, and restores nobody
//! released.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::prepared::PreparedRestores;
use crate::store::Store;

#[derive(Clone, Copy, Debug)]
pub struct SweepConfig {
    /// How often the store is swept.
    pub every: Duration,
    /// Partial replicas untouched for this long go.
    pub partial_transfer_ttl: Duration,
}

/// Sweeps `store` every `config.every`, forever.
pub async fn run(store: Arc<Store>, metrics: Arc<Metrics>, config: SweepConfig) {
    let mut ticks = tokio::time::interval(config.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let store = store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let now = jiff::Timestamp::now().as_millisecond();
            let deleted = store.sweep_retention(now);
            let partials = store.sweep_incoming(config.partial_transfer_ttl);
            (deleted, partials)
        })
        .await;
        match swept {
            Ok((deleted, partials)) => {
                match deleted {
                    Ok(ids) if !ids.is_empty() => {
                        tracing::info!(deleted = ?ids, "retention sweep removed archives");
                        metrics.count_deleted("sweep", ids.len());
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "retention sweep failed"),
                }
                match partials {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::info!(
                            transfers = removed,
                            ttl_s = config.partial_transfer_ttl.as_secs(),
                            "removed partial replicas no sender resumed"
                        );
                        metrics.incoming_swept.inc_by(removed as u64);
                    }
                    Err(err) => tracing::warn!(error = %err, "sweeping partial replicas failed"),
                }
            }
            Err(err) => tracing::warn!(error = %err, "the store sweep task failed"),
        }
    }
}

/// Every `every`, removes what restores left behind more than `ttl` ago:
/// the controller releases a restore once it finished, so what is older is
/// a release that never came (a controller that died or lost the node).
pub async fn release_stale_restores(
    prepared: Arc<PreparedRestores>,
    every: Duration,
    ttl: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let finder = prepared.clone();
        let stale = tokio::task::spawn_blocking(move || finder.older_than(ttl))
            .await
            .unwrap_or_default();
        for id in stale {
            match prepared.release(&id, "").await {
                Ok(released) => tracing::info!(archive = %id, images = ?released.images,
                    freed_bytes = released.bytes, ttl_s = ttl.as_secs(),
                    "removed a restore nobody released within its TTL"),
                Err(err) => tracing::warn!(archive = %id, error = %err,
                    "could not remove a stale prepared restore"),
            }
        }
    }
}
