//! Per-peer limits for serving chunks: a token bucket of bytes (a rate and a burst) and a
//! number of concurrent streams, for at most [`RateConfig::max_peers`] peers at a time.
//!
//! The bucket may go into debt: a request is admitted when the peer's bucket is not empty,
//! and what it sends is then taken, even past zero. A peer is thus refused (asked to come
//! back when its debt is paid) only at the start of a request, never halfway through one,
//! and over time gets at most the rate plus one burst plus one request.
//!
//! Pure: the caller passes `now` (a [`Duration`] since any fixed epoch it likes), so a
//! simulator can drive it with virtual time. Generic over the peer key.
//!
//! What this cannot do: it limits each peer, not all peers together (the caller bounds the
//! total number of streams); a peer evicted while idle with a full bucket loses nothing, but
//! one refused because the table is full of active peers only learns to retry later.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// The limits applied to each peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateConfig {
    /// Sustained bytes per second a peer is served.
    pub bytes_per_sec: u64,
    /// Bytes a peer may take at once after being idle.
    pub burst_bytes: u64,
    /// Streams of one peer served at the same time.
    pub max_streams_per_peer: u32,
    /// Peers tracked at once.
    pub max_peers: usize,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            bytes_per_sec: 256 << 20,
            burst_bytes: 32 << 20,
            max_streams_per_peer: 8,
            max_peers: 1024,
        }
    }
}

/// Why a peer is refused now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("rate limited: retry after {retry_after:?}")]
    Rate { retry_after: Duration },
    #[error("the peer already has {open} streams open")]
    Streams { open: u32 },
    #[error("too many peers are being served")]
    TooManyPeers,
}

impl Refusal {
    /// How long the peer should wait before asking again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::Rate { retry_after } => *retry_after,
            Refusal::Streams { .. } | Refusal::TooManyPeers => Duration::from_millis(100),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Bytes available; negative is debt.
    tokens: i64,
    /// When `tokens` was last refilled.
    refilled: Duration,
    streams: u32,
}

/// The limiter: one bucket and stream count per peer.
#[derive(Debug)]
pub struct RateLimiter<P> {
    cfg: RateConfig,
    peers: HashMap<P, Bucket>,
}

impl<P: Clone + Eq + Hash> RateLimiter<P> {
    pub fn new(cfg: RateConfig) -> Self {
        RateLimiter {
            cfg,
            peers: HashMap::new(),
        }
    }

    pub fn config(&self) -> &RateConfig {
        &self.cfg
    }

    /// Peers tracked now.
    pub fn tracked(&self) -> usize {
        self.peers.len()
    }

    fn burst(&self) -> i64 {
        i64::try_from(self.cfg.burst_bytes).unwrap_or(i64::MAX)
    }

    /// Adds what `elapsed` earned at the configured rate, capped at the burst.
    fn refill(cfg: &RateConfig, burst: i64, b: &mut Bucket, now: Duration) {
        let elapsed = now.saturating_sub(b.refilled);
        let earned = elapsed.as_nanos() * u128::from(cfg.bytes_per_sec) / 1_000_000_000;
        if earned > 0 {
            let earned = i64::try_from(earned).unwrap_or(i64::MAX);
            b.tokens = b.tokens.saturating_add(earned).min(burst);
            b.refilled = now;
        } else if now < b.refilled {
            // A clock that went back: restart from it rather than wait.
            b.refilled = now;
        }
    }

    /// The peer's bucket, making room for a new peer by forgetting an idle one with a full
    /// bucket (which loses nothing).
    fn bucket(&mut self, peer: &P, now: Duration) -> Result<&mut Bucket, Refusal> {
        let burst = self.burst();
        if !self.peers.contains_key(peer) {
            if self.peers.len() >= self.cfg.max_peers {
                let cfg = self.cfg;
                let idle = self.peers.iter_mut().find_map(|(k, b)| {
                    Self::refill(&cfg, burst, b, now);
                    (b.streams == 0 && b.tokens >= burst).then(|| k.clone())
                });
                match idle {
                    Some(k) => {
                        self.peers.remove(&k);
                    }
                    None => return Err(Refusal::TooManyPeers),
                }
            }
            self.peers.insert(
                peer.clone(),
                Bucket {
                    tokens: burst,
                    refilled: now,
                    streams: 0,
                },
            );
        }
        let b = self.peers.get_mut(peer).ok_or(Refusal::TooManyPeers)?;
        Self::refill(&self.cfg, burst, b, now);
        Ok(b)
    }

    /// A new stream from `peer`: admitted unless it already has the most streams open.
    /// Every admitted stream must be closed with [`close_stream`](Self::close_stream).
    pub fn open_stream(&mut self, peer: &P, now: Duration) -> Result<(), Refusal> {
        let max = self.cfg.max_streams_per_peer;
        let b = self.bucket(peer, now)?;
        if b.streams >= max {
            return Err(Refusal::Streams { open: b.streams });
        }
        b.streams += 1;
        Ok(())
    }

    /// A stream admitted by [`open_stream`](Self::open_stream) ended.
    pub fn close_stream(&mut self, peer: &P) {
        if let Some(b) = self.peers.get_mut(peer) {
            b.streams = b.streams.saturating_sub(1);
        }
    }

    /// Whether a request from `peer` may be served now: yes while its bucket is not empty,
    /// otherwise the time until its debt is paid.
    pub fn admit(&mut self, peer: &P, now: Duration) -> Result<(), Refusal> {
        let rate = self.cfg.bytes_per_sec;
        let b = self.bucket(peer, now)?;
        if b.tokens > 0 {
            return Ok(());
        }
        if rate == 0 {
            return Err(Refusal::Rate {
                retry_after: Duration::from_secs(60),
            });
        }
        // Time to earn the debt back plus one byte.
        let owed = u128::from(b.tokens.unsigned_abs()) + 1;
        let nanos = (owed * 1_000_000_000).div_ceil(u128::from(rate));
        let retry_after = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Err(Refusal::Rate { retry_after })
    }

    /// Takes `bytes` sent to `peer` from its bucket (it may go into debt).
    pub fn take(&mut self, peer: &P, bytes: u64, now: Duration) {
        if let Ok(b) = self.bucket(peer, now) {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            b.tokens = b.tokens.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> RateConfig {
        RateConfig {
            bytes_per_sec: 1_000_000,
            burst_bytes: 100_000,
            max_streams_per_peer: 2,
            max_peers: 3,
        }
    }

    #[test]
    fn burst_then_rate() {
        let mut l = RateLimiter::new(cfg());
        let t0 = Duration::from_secs(10);
        assert_eq!(l.admit(&1, t0), Ok(()));
        l.take(&1, 150_000, t0);
        // 50,000 bytes of debt at 1 MB/s: 50 ms (and a byte).
        let Err(Refusal::Rate { retry_after }) = l.admit(&1, t0) else {
            panic!("admitted in debt")
        };
        assert!(
            retry_after > 50 * MS && retry_after <= 51 * MS,
            "{retry_after:?}"
        );
        assert!(l.admit(&1, t0 + 40 * MS).is_err());
        assert_eq!(l.admit(&1, t0 + 51 * MS), Ok(()));
        // Another peer has its own bucket.
        assert_eq!(l.admit(&2, t0), Ok(()));
    }

    #[test]
    fn sustained_rate_is_the_configured_one() {
        let mut l = RateLimiter::new(cfg());
        let mut now = Duration::ZERO;
        let mut sent = 0u64;
        while now < Duration::from_secs(10) {
            match l.admit(&7, now) {
                Ok(()) => {
                    l.take(&7, 64 * 1024, now);
                    sent += 64 * 1024;
                }
                Err(r) => now += r.retry_after(),
            }
        }
        // Rate x time + burst + one request, at most.
        assert!(sent <= 10_000_000 + 100_000 + 65536, "{sent}");
        assert!(sent >= 9_900_000, "{sent}");
    }

    #[test]
    fn idle_buckets_refill_only_to_the_burst() {
        let mut l = RateLimiter::new(cfg());
        l.take(&1, 100_000, Duration::ZERO);
        l.take(&1, 1, Duration::from_secs(3600));
        // After an hour the bucket is full (100,000), not 3.6 GB.
        l.take(&1, 99_999, Duration::from_secs(3600));
        assert!(l.admit(&1, Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn streams_per_peer_are_capped() {
        let mut l = RateLimiter::new(cfg());
        let now = Duration::ZERO;
        assert_eq!(l.open_stream(&1, now), Ok(()));
        assert_eq!(l.open_stream(&1, now), Ok(()));
        assert_eq!(l.open_stream(&1, now), Err(Refusal::Streams { open: 2 }));
        assert_eq!(l.open_stream(&2, now), Ok(()));
        l.close_stream(&1);
        assert_eq!(l.open_stream(&1, now), Ok(()));
        l.close_stream(&9);
    }

    #[test]
    fn tracked_peers_are_capped_and_idle_ones_forgotten() {
        let mut l = RateLimiter::new(cfg());
        let t = Duration::ZERO;
        for p in 0..3 {
            l.open_stream(&p, t).unwrap();
        }
        assert_eq!(l.open_stream(&3, t), Err(Refusal::TooManyPeers));
        assert_eq!(l.admit(&3, t), Err(Refusal::TooManyPeers));
        // Peer 0 goes idle with a full bucket: its slot is reused.
        l.close_stream(&0);
        assert_eq!(l.open_stream(&3, t), Ok(()));
        assert_eq!(l.tracked(), 3);
        // Peer 1 idle but in debt: kept until its bucket refills.
        l.close_stream(&1);
        l.take(&1, 50_000, t);
        assert_eq!(l.admit(&4, t), Err(Refusal::TooManyPeers));
        assert_eq!(l.admit(&4, t + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn zero_rate_refuses_once_the_burst_is_spent() {
        let mut l = RateLimiter::new(RateConfig {
            bytes_per_sec: 0,
            ..cfg()
        });
        l.take(&1, 100_000, Duration::ZERO);
        assert!(matches!(
            l.admit(&1, Duration::from_secs(5)),
            Err(Refusal::Rate { .. })
        ));
    }
}
