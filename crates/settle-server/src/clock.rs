//! Time and id generation, injected so that tests can control both.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

use rand::Rng;
use settle_domain::{ids, Timestamp};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(micros)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn at(t: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(t.0)))
    }

    pub fn advance_seconds(&self, seconds: i64) {
        self.0.fetch_add(seconds.saturating_mul(1_000_000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Makes prefixed, time-ordered ids and secrets.
#[derive(Clone)]
pub struct Ids {
    clock: Arc<dyn Clock>,
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl Ids {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Ids { clock }
    }

    pub fn make(&self, prefix: &str) -> String {
        let millis = u64::try_from(self.clock.now().0 / 1000).unwrap_or(0);
        ids::format_id(prefix, millis, rand::thread_rng().gen())
    }

    /// `prefix` followed by 43 base62 characters: 256 bits from the OS-seeded CSPRNG.
    pub fn secret(&self, prefix: &str) -> String {
        let mut rng = rand::thread_rng();
        let mut s = String::with_capacity(prefix.len() + 43);
        s.push_str(prefix);
        for _ in 0..43 {
            s.push(char::from(BASE62[rng.gen_range(0..62)]));
        }
        s
    }
}
