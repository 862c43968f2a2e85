//! Admitting job submissions per submitter: whether this node takes a submission whose
//! signature already verified ([`novacron_mesh::submission::verify`]). In order:
//! - the submitter's key must be trusted here (`novacron keys trust <key>`);
//! - the job id must be new: a submission is signed once and may be resent by anyone who
//!   saw it, so ids are remembered until the submission expires (then `verify` refuses it
//!   anyway, and it is forgotten);
//! - the submitter must have fewer than [`SubmitterLimits::max_active_jobs`] jobs active;
//! - its token bucket must hold a token: bursts of [`SubmitterLimits::burst`], one more
//!   every [`SubmitterLimits::refill_every`].
//!
//! Each submitter has its own bucket, quota and share of the replay memory, so a flood from
//! one (or a replay of its submissions by anyone) never refuses another's. Replays and
//! quota refusals take no token: someone resending a submitter's old submissions cannot
//! drain its bucket. A refused submission is not remembered, so the same signed submission
//! may be sent again once there is room.
//!
//! Pure: time is a [`Duration`] since the unix epoch, as submissions expire in unix
//! seconds; a clock stepping back only makes the bucket stricter for a while.
//!
//! Memory is bounded: state is kept only for trusted submitters, and each remembers at most
//! [`SubmitterLimits::max_remembered`] ids (by default what its rate allows over the longest
//! validity of a submission, so a submitter within its rate never hits it).
//!
//! What this cannot do: it runs after the signature check, so it cannot spare the node the
//! cost of verifying a flood of forged submissions (a bucket keyed by an unverified key
//! would let anyone drain anyone's); that is the transport's rate limit's job. The replay
//! memory is per node: a submission may be admitted by two nodes, which is why the job id
//! (fixed by the signature) names the job mesh-wide.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use novacron_mesh::submission::{
    JobId, SubmitterId, VerifiedSubmission, MAX_SUBMISSION_LIFETIME_S,
};

/// Per-submitter limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubmitterLimits {
    /// Submissions a submitter may make at once (at least 1).
    pub burst: u32,
    /// One more submission is allowed per this much time (zero: no rate limit).
    pub refill_every: Duration,
    /// Jobs of one submitter active at once (admitted and not ended).
    pub max_active_jobs: u32,
    /// Job ids of one submitter remembered at once.
    pub max_remembered: usize,
}

impl Default for SubmitterLimits {
    fn default() -> Self {
        SubmitterLimits::new(10, Duration::from_secs(1), 100)
    }
}

/// Most job ids one submitter's replay memory holds when its rate is not limited.
pub const MAX_REMEMBERED_UNLIMITED: usize = 1 << 20;

impl SubmitterLimits {
    /// Limits of a burst, a refill period (zero: no rate limit) and a quota of active jobs;
    /// the replay memory holds what the rate allows over a submission's longest validity.
    pub fn new(burst: u32, refill_every: Duration, max_active_jobs: u32) -> SubmitterLimits {
        let refills = match refill_every.as_millis() {
            0 => MAX_REMEMBERED_UNLIMITED,
            ms => ((MAX_SUBMISSION_LIFETIME_S as u128 * 1000) / ms)
                .min(MAX_REMEMBERED_UNLIMITED as u128) as usize,
        };
        SubmitterLimits {
            burst: burst.max(1),
            refill_every,
            max_active_jobs,
            max_remembered: (burst as usize).saturating_add(refills),
        }
    }
}

/// Why a submission is not admitted; each says what the submitter can do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error(
        "the submitter {submitter} is not trusted by this node; to trust it, run `novacron keys \
         trust {submitter}` on the node"
    )]
    Untrusted { submitter: SubmitterId },
    #[error(
        "job {job} was already submitted: a submission is taken once (sign it again for a new job)"
    )]
    Replayed { job: JobId },
    #[error("the submission of job {job} has expired: sign it again")]
    Expired { job: JobId },
    #[error(
        "the submitter {submitter} has {active} jobs active, its limit here: wait until some \
         end or cancel some"
    )]
    QuotaExceeded { submitter: SubmitterId, active: u32 },
    #[error(
        "the submitter {submitter} has {remembered} submissions not yet expired, its limit \
         here: sign with a shorter validity or wait"
    )]
    TooManyRemembered {
        submitter: SubmitterId,
        remembered: usize,
    },
    #[error(
        "the submitter {submitter} submits too fast: try again in {} ms",
        retry_after.as_millis()
    )]
    RateLimited {
        submitter: SubmitterId,
        retry_after: Duration,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Submitter {
    /// The token bucket as the time its last admitted submission "is due" (GCRA): a
    /// submission is admitted while that time stays within a burst of `now`.
    due: Duration,
    active: u32,
    remembered: usize,
}

/// The admission state of every trusted submitter seen; see the module doc.
#[derive(Clone, Debug, Default)]
pub struct SubmitterGate {
    limits: SubmitterLimits,
    submitters: BTreeMap<SubmitterId, Submitter>,
    /// Admitted job ids: their submitter and expiry.
    seen: BTreeMap<JobId, (SubmitterId, Duration)>,
    /// The same ids by expiry, to forget them in order.
    expiry: BTreeSet<(Duration, JobId)>,
}

impl SubmitterGate {
    pub fn new(limits: SubmitterLimits) -> SubmitterGate {
        SubmitterGate {
            limits,
            ..SubmitterGate::default()
        }
    }

    /// Admits job `job` from `submitter`, whose submission expires at `expires_at`, at
    /// `now` (both since the unix epoch), or says why not. Admitted, it counts as active
    /// until [`Self::job_ended`].
    pub fn admit(
        &mut self,
        trusted: &BTreeSet<SubmitterId>,
        submitter: SubmitterId,
        job: JobId,
        expires_at: Duration,
        now: Duration,
    ) -> Result<(), AdmitError> {
        self.forget_expired(now);
        if !trusted.contains(&submitter) {
            return Err(AdmitError::Untrusted { submitter });
        }
        if self.seen.contains_key(&job) {
            return Err(AdmitError::Replayed { job });
        }
        if expires_at <= now {
            return Err(AdmitError::Expired { job });
        }
        let limits = self.limits;
        let s = self.submitters.entry(submitter).or_default();
        if s.active >= limits.max_active_jobs {
            return Err(AdmitError::QuotaExceeded {
                submitter,
                active: s.active,
            });
        }
        if s.remembered >= limits.max_remembered {
            return Err(AdmitError::TooManyRemembered {
                submitter,
                remembered: s.remembered,
            });
        }
        let due = s.due.max(now).saturating_add(limits.refill_every);
        let allowance = limits.refill_every.saturating_mul(limits.burst.max(1));
        let ahead = due - now;
        if ahead > allowance {
            return Err(AdmitError::RateLimited {
                submitter,
                retry_after: ahead - allowance,
            });
        }
        s.due = due;
        s.active += 1;
        s.remembered += 1;
        self.seen.insert(job, (submitter, expires_at));
        self.expiry.insert((expires_at, job));
        Ok(())
    }

    /// [`Self::admit`] for a verified submission.
    pub fn admit_verified(
        &mut self,
        trusted: &BTreeSet<SubmitterId>,
        submission: &VerifiedSubmission,
        now: Duration,
    ) -> Result<(), AdmitError> {
        let expires_at = Duration::from_secs(submission.submission.expires_at);
        self.admit(
            trusted,
            submission.submitter,
            submission.id,
            expires_at,
            now,
        )
    }

    /// A job of `submitter` ended (succeeded, failed, cancelled, lost): its quota has room
    /// for one more. Its id stays remembered until its submission expires.
    pub fn job_ended(&mut self, submitter: SubmitterId) {
        if let Some(s) = self.submitters.get_mut(&submitter) {
            s.active = s.active.saturating_sub(1);
        }
    }

    /// Sets how many jobs of `submitter` are active (after a restart, from the jobs kept).
    pub fn set_active(&mut self, submitter: SubmitterId, active: u32) {
        self.submitters.entry(submitter).or_default().active = active;
    }

    /// Jobs of `submitter` counted active.
    pub fn active(&self, submitter: SubmitterId) -> u32 {
        self.submitters.get(&submitter).map_or(0, |s| s.active)
    }

    /// Job ids remembered (admitted, not yet expired) at the last call.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Forgets the ids whose submissions expired by `now` (they cannot be replayed: the
    /// signature check refuses them).
    pub fn forget_expired(&mut self, now: Duration) {
        while let Some(&(at, job)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some((submitter, _)) = self.seen.remove(&job) {
                if let Some(s) = self.submitters.get_mut(&submitter) {
                    s.remembered = s.remembered.saturating_sub(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);
    const T0: Duration = Duration::from_secs(1_700_000_000);
    const HOUR: Duration = Duration::from_secs(3600);

    fn key(n: u8) -> SubmitterId {
        SubmitterId([n; 32])
    }

    fn job(submitter: u8, n: u32) -> JobId {
        let mut id = [submitter; 32];
        id[..4].copy_from_slice(&n.to_le_bytes());
        JobId(id)
    }

    fn trusted(keys: &[u8]) -> BTreeSet<SubmitterId> {
        keys.iter().map(|k| key(*k)).collect()
    }

    fn limits() -> SubmitterLimits {
        SubmitterLimits {
            max_active_jobs: 1000,
            ..SubmitterLimits::default()
        }
    }

    #[test]
    fn an_untrusted_submitter_is_told_how_to_be_trusted() {
        let mut g = SubmitterGate::default();
        let e = g
            .admit(&trusted(&[1]), key(2), job(2, 0), T0 + HOUR, T0)
            .unwrap_err();
        assert_eq!(e, AdmitError::Untrusted { submitter: key(2) });
        let text = e.to_string();
        assert!(
            text.contains(&format!("novacron keys trust {}", key(2))) && text.contains("ed25519:"),
            "{text}"
        );
        // Nothing was kept for it.
        assert_eq!(g.remembered(), 0);
        assert_eq!(g.active(key(2)), 0);
    }

    #[test]
    fn a_job_id_is_taken_once_until_its_submission_expires() {
        let mut g = SubmitterGate::new(limits());
        let t = trusted(&[1, 2]);
        g.admit(&t, key(1), job(1, 0), T0 + HOUR, T0).unwrap();
        assert_eq!(
            g.admit(&t, key(1), job(1, 0), T0 + HOUR, T0 + S),
            Err(AdmitError::Replayed { job: job(1, 0) })
        );
        // Another trusted key re-signing the same payload gets the same id: refused too.
        assert!(matches!(
            g.admit(&t, key(2), job(1, 0), T0 + HOUR, T0 + S),
            Err(AdmitError::Replayed { .. })
        ));
        assert!(g
            .admit(&t, key(1), job(1, 0), T0 + HOUR, T0 + S)
            .unwrap_err()
            .to_string()
            .contains("already submitted"));
        // Expired, it is forgotten (the signature check refuses it from then on).
        assert_eq!(g.remembered(), 1);
        g.forget_expired(T0 + HOUR);
        assert_eq!(g.remembered(), 0);
        assert_eq!(
            g.admit(&t, key(1), job(1, 1), T0 + HOUR, T0 + HOUR),
            Err(AdmitError::Expired { job: job(1, 1) })
        );
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_refill() {
        let mut g = SubmitterGate::new(limits());
        let t = trusted(&[1]);
        for n in 0..10 {
            g.admit(&t, key(1), job(1, n), T0 + HOUR, T0).unwrap();
        }
        let e = g.admit(&t, key(1), job(1, 10), T0 + HOUR, T0).unwrap_err();
        assert_eq!(
            e,
            AdmitError::RateLimited {
                submitter: key(1),
                retry_after: S
            }
        );
        assert!(e.to_string().contains("try again in 1000 ms"), "{e}");
        let half = Duration::from_millis(500);
        assert!(matches!(
            g.admit(&t, key(1), job(1, 10), T0 + HOUR, T0 + half),
            Err(AdmitError::RateLimited { retry_after, .. }) if retry_after == half
        ));
        // The refused submission was not remembered: sent again a second later, it is taken.
        g.admit(&t, key(1), job(1, 10), T0 + HOUR, T0 + S).unwrap();
        assert!(g.admit(&t, key(1), job(1, 11), T0 + HOUR, T0 + S).is_err());
        // After a long quiet the full burst is back, no more.
        for n in 12..22 {
            g.admit(&t, key(1), job(1, n), T0 + HOUR, T0 + 100 * S)
                .unwrap();
        }
        assert!(g
            .admit(&t, key(1), job(1, 22), T0 + HOUR, T0 + 100 * S)
            .is_err());
    }

    #[test]
    fn the_quota_counts_active_jobs() {
        let mut g = SubmitterGate::new(SubmitterLimits {
            max_active_jobs: 2,
            ..SubmitterLimits::default()
        });
        let t = trusted(&[1]);
        g.admit(&t, key(1), job(1, 0), T0 + HOUR, T0).unwrap();
        g.admit(&t, key(1), job(1, 1), T0 + HOUR, T0).unwrap();
        let e = g.admit(&t, key(1), job(1, 2), T0 + HOUR, T0).unwrap_err();
        assert_eq!(
            e,
            AdmitError::QuotaExceeded {
                submitter: key(1),
                active: 2
            }
        );
        g.job_ended(key(1));
        assert_eq!(g.active(key(1)), 1);
        g.admit(&t, key(1), job(1, 2), T0 + HOUR, T0).unwrap();
        // After a restart the daemon sets the count from the jobs it kept.
        g.set_active(key(1), 0);
        g.admit(&t, key(1), job(1, 3), T0 + HOUR, T0).unwrap();
    }

    #[test]
    fn a_flood_or_a_replay_of_one_submitter_refuses_nobody_else() {
        let mut g = SubmitterGate::new(SubmitterLimits {
            max_active_jobs: 50,
            ..SubmitterLimits::default()
        });
        let t = trusted(&[1, 2]);
        // Submitter 1 floods: thousands of submissions over a minute.
        for n in 0..5000u32 {
            let now = T0 + Duration::from_millis(u64::from(n) * 12);
            let _ = g.admit(&t, key(1), job(1, n), T0 + HOUR, now);
        }
        assert_eq!(g.active(key(1)), 50, "its quota held it");
        // Submitter 2 still has its whole burst.
        let now = T0 + 60 * S;
        for n in 0..10 {
            g.admit(&t, key(2), job(2, n), T0 + HOUR, now).unwrap();
        }
        // Someone replays submitter 2's submissions: refused as replays, and its bucket
        // and quota are untouched by them.
        let mut g = SubmitterGate::new(limits());
        g.admit(&t, key(2), job(2, 0), T0 + HOUR, T0).unwrap();
        for _ in 0..100 {
            assert!(matches!(
                g.admit(&t, key(2), job(2, 0), T0 + HOUR, T0),
                Err(AdmitError::Replayed { .. })
            ));
        }
        for n in 1..10 {
            g.admit(&t, key(2), job(2, n), T0 + HOUR, T0).unwrap();
        }
    }

    #[test]
    fn the_replay_memory_of_a_submitter_is_bounded() {
        let mut g = SubmitterGate::new(SubmitterLimits {
            max_remembered: 3,
            refill_every: Duration::ZERO,
            ..SubmitterLimits::default()
        });
        let t = trusted(&[1, 2]);
        for n in 0..3 {
            g.admit(&t, key(1), job(1, n), T0 + HOUR, T0).unwrap();
            g.job_ended(key(1));
        }
        assert!(matches!(
            g.admit(&t, key(1), job(1, 3), T0 + HOUR, T0),
            Err(AdmitError::TooManyRemembered { remembered: 3, .. })
        ));
        g.admit(&t, key(2), job(2, 0), T0 + HOUR, T0).unwrap();
        // As its ids expire, room comes back.
        g.admit(&t, key(1), job(1, 3), T0 + 2 * HOUR, T0 + HOUR)
            .unwrap();
        assert_eq!(g.remembered(), 1, "the four expired ids are forgotten");
        assert!(SubmitterLimits::default().max_remembered >= 86_400);
        let unlimited = SubmitterLimits::new(5, Duration::ZERO, 7);
        assert_eq!(unlimited.max_remembered, 5 + MAX_REMEMBERED_UNLIMITED);
        let slow = SubmitterLimits::new(1, Duration::from_secs(3600), 1);
        assert_eq!(
            slow.max_remembered,
            1 + (MAX_SUBMISSION_LIFETIME_S / 3600) as usize
        );
    }

    #[derive(Clone, Debug)]
    struct Attempt {
        submitter: u8,
        job: u32,
        after_ms: u64,
        ends_one: bool,
    }

    fn arb_attempt(submitter: u8) -> impl Strategy<Value = Attempt> {
        (0u32..40, 0u64..1500, any::<bool>()).prop_map(move |(job, after_ms, ends_one)| Attempt {
            submitter,
            job,
            after_ms,
            ends_one,
        })
    }

    /// Runs `attempts` in time order through a fresh gate; the outcomes of submitter 2's.
    fn run(attempts: &[(u64, Attempt)]) -> Vec<Result<(), AdmitError>> {
        let mut g = SubmitterGate::new(SubmitterLimits {
            burst: 3,
            max_active_jobs: 5,
            ..SubmitterLimits::default()
        });
        let t = trusted(&[1, 2]);
        let mut out = Vec::new();
        for (at, a) in attempts {
            let now = T0 + Duration::from_millis(*at);
            // The expiry is signed with the id: one per id.
            let expires_at = T0 + Duration::from_secs(5 + 3 * u64::from(a.job));
            let r = g.admit(
                &t,
                key(a.submitter),
                job(a.submitter, a.job),
                expires_at,
                now,
            );
            if a.ends_one {
                g.job_ended(key(a.submitter));
            }
            if a.submitter == 2 {
                out.push(r);
            }
        }
        out
    }

    fn timed(attempts: Vec<Attempt>) -> Vec<(u64, Attempt)> {
        let mut at = 0;
        attempts
            .into_iter()
            .map(|a| {
                at += a.after_ms;
                (at, a)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn another_submitters_traffic_changes_nothing_for_a_submitter(
            mine in prop::collection::vec(arb_attempt(2), 0..40),
            theirs in prop::collection::vec(arb_attempt(1), 0..80),
        ) {
            let mine = timed(mine);
            let theirs = timed(theirs);
            let mut both: Vec<(u64, Attempt)> = mine.iter().chain(theirs.iter()).cloned().collect();
            both.sort_by_key(|(at, a)| (*at, a.submitter));
            prop_assert_eq!(run(&mine), run(&both));
        }

        #[test]
        fn admissions_never_exceed_the_burst_plus_the_refill(
            attempts in prop::collection::vec(arb_attempt(2), 0..80),
        ) {
            let attempts = timed(attempts);
            let results = run(&attempts);
            let mut admitted_ids = BTreeSet::new();
            let first = attempts.first().map_or(0, |(at, _)| *at);
            for (i, ((at, a), r)) in attempts.iter().zip(&results).enumerate() {
                if r.is_ok() {
                    // The burst of 3, plus one per whole second since the first attempt.
                    let admitted = results[..=i].iter().filter(|r| r.is_ok()).count() as u64;
                    prop_assert!(
                        admitted <= 3 + (at - first) / 1000,
                        "{} admitted by {} ms", admitted, at - first
                    );
                    admitted_ids.insert(a.job);
                }
            }
            prop_assert_eq!(
                admitted_ids.len(),
                results.iter().filter(|r| r.is_ok()).count(),
                "an id was admitted twice"
            );
        }
    }
}
