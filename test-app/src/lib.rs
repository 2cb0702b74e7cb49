//! A stateful HTTP counter. Its state lives only in memory: a counter that
//! grows every 100 ms and an optional ballast of pages filled with a
//! deterministic pattern. After a restore from a checkpoint the counter
//! continues from where it was and `/verify` proves the ballast is intact
//! bit for bit; after a cold start the counter is back at zero.
//!
//! Endpoints: `GET /health` (liveness), `GET /state` and `PUT /state` (JSON,
//! for the StateApi strategy), `GET /verify` (counter and ballast check),
//! `POST /kill` (exit non-zero, to simulate a crash).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// Bytes per ballast page; each page starts with its index so a page that
/// moved is caught, not only one that changed.
const PAGE: usize = 4096;

/// The application's memory state.
#[derive(Debug)]
pub struct App {
    counter: AtomicU64,
    ballast: Vec<u8>,
    seed: u64,
}

/// What `/state` exchanges.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateDoc {
    pub counter: u64,
}

/// What `/verify` reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verification {
    pub counter: u64,
    pub ballast_bytes: u64,
    pub ballast_ok: bool,
    /// Index of the first page that does not match, if any.
    pub first_bad_page: Option<u64>,
}

impl App {
    /// An app with `ballast_mib` MiB of patterned memory.
    pub fn new(ballast_mib: u64, seed: u64) -> Self {
        let bytes = usize::try_from(ballast_mib << 20).unwrap_or(0);
        let mut ballast = vec![0u8; bytes];
        for (index, page) in ballast.chunks_mut(PAGE).enumerate() {
            fill_page(page, index as u64, seed);
        }
        Self {
            counter: AtomicU64::new(0),
            ballast,
            seed,
        }
    }

    pub fn counter(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// Advances the counter; returns the new value.
    pub fn tick(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn set_counter(&self, value: u64) {
        self.counter.store(value, Ordering::SeqCst);
    }

    /// Checks every ballast page against the pattern.
    pub fn verify(&self) -> Verification {
        let mut expected = vec![0u8; PAGE];
        let first_bad_page = self
            .ballast
            .chunks(PAGE)
            .enumerate()
            .find_map(|(index, page)| {
                fill_page(&mut expected[..page.len()], index as u64, self.seed);
                (page != &expected[..page.len()]).then_some(index as u64)
            });
        Verification {
            counter: self.counter(),
            ballast_bytes: self.ballast.len() as u64,
            ballast_ok: first_bad_page.is_none(),
            first_bad_page,
        }
    }
}

fn fill_page(page: &mut [u8], index: u64, seed: u64) {
    let mut state = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for (position, byte) in page.iter_mut().enumerate() {
        if position < 8 {
            *byte = index.to_le_bytes()[position];
            continue;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
}

/// Increments the counter every `period` and logs each value with a
/// timestamp (the gap between two lines is the pause a checkpoint caused).
pub async fn count(app: Arc<App>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let value = app.tick();
        #[allow(clippy::print_stdout)] // the log is part of the app's contract
        {
            println!("{} counter={value}", jiff::Timestamp::now());
        }
    }
}

/// The HTTP API.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/state", get(get_state).put(put_state))
        .route("/verify", get(verify))
        .route("/kill", post(kill))
        .with_state(app)
}

async fn get_state(State(app): State<Arc<App>>) -> Json<StateDoc> {
    Json(StateDoc {
        counter: app.counter(),
    })
}

async fn put_state(State(app): State<Arc<App>>, Json(doc): Json<StateDoc>) -> StatusCode {
    app.set_counter(doc.counter);
    StatusCode::NO_CONTENT
}

async fn verify(State(app): State<Arc<App>>) -> Json<Verification> {
    Json(app.verify())
}

async fn kill() -> StatusCode {
    tokio::spawn(async {
        // Let the response go out first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        eprintln!("killed through /kill");
        std::process::exit(3);
    });
    StatusCode::ACCEPTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballast_verifies_and_catches_a_flipped_bit() {
        let mut app = App::new(2, 42);
        assert!(app.verify().ballast_ok);
        app.ballast[5 * PAGE + 100] ^= 0x10;
        let report = app.verify();
        assert!(!report.ballast_ok);
        assert_eq!(report.first_bad_page, Some(5));
    }

    #[test]
    fn swapped_pages_are_caught() {
        let mut app = App::new(1, 7);
        let (first, second) = app.ballast.split_at_mut(PAGE);
        first.swap_with_slice(&mut second[..PAGE]);
        assert_eq!(app.verify().first_bad_page, Some(0));
    }
}
