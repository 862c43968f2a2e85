//! Whether this node takes a VM, and what it has free: one accounting for new VMs
//! (`POST /api/v1/vms`), suspended VMs brought back, incoming migration offers, and the
//! capacity the node gossips to its cell. Pure: the daemon gathers the inputs (what its VMs
//! and the offers it accepted hold, the politeness decision, `/proc/meminfo` as the
//! politeness sampler last read it) and acts on the answer.
//!
//! Slots are vCPUs: the node offers the host's CPUs under `maxCpusPct` (BOINC's
//! `max_ncpus_pct`), one slot each, and a VM holds one slot per vCPU. Memory free for VMs
//! is the smaller of `MemAvailable` and the politeness memory cap (a share of `MemTotal`)
//! minus what the node's VMs hold. `MemAvailable` already leaves out the guest memory the
//! VMs have touched, so it is the tighter bound only when other programs need the host's
//! memory; the cap counts every VM at its full size, touched or not.
//!
//! What this cannot do: see whether the host's CPUs are busy with other work (the
//! politeness policy decides that, and closes the node when it must); count the VMM's own
//! overhead beyond guest memory (page tables, a few MiB per VM).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use novacron_model::VmInfo;

const MIB: u64 = 1 << 20;

/// How long an accepted offer holds its room while its VM is not recorded: the source
/// opens its streams within seconds, and the destination drops a session whose streams do
/// not all arrive within 30 s (`MeshMigrationConfig::assemble_timeout`).
pub const RESERVATION_TTL: Duration = Duration::from_secs(60);

/// The politeness memory cap in force: bytes, and the share of `MemTotal` it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemCap {
    pub bytes: u64,
    pub pct: u8,
}

/// Why the node takes no VM at all now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// SIGTERM, or `POST /api/v1/drain`.
    Draining,
    /// The politeness decision is not a run: `state` (evacuate, suspended) and why.
    Owner { state: String, reasons: Vec<String> },
}

/// What VMs hold, or ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub vcpus: u32,
    pub mem_bytes: u64,
}

impl Load {
    pub fn new(vcpus: u8, mem_bytes: u64) -> Load {
        Load {
            vcpus: u32::from(vcpus),
            mem_bytes,
        }
    }

    /// This and `other` together.
    pub fn plus(self, other: Load) -> Load {
        Load {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            mem_bytes: self.mem_bytes.saturating_add(other.mem_bytes),
        }
    }
}

impl std::iter::Sum for Load {
    fn sum<I: Iterator<Item = Load>>(iter: I) -> Load {
        iter.fold(Load::default(), Load::plus)
    }
}

/// Everything admission looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accounting {
    /// The host's CPUs VMs may use (`maxCpusPct` of them, at least one): one slot each.
    pub slots: u32,
    /// `MemTotal` and `MemAvailable`, when known.
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    /// The politeness memory cap, when the decision is a run and `MemTotal` is known.
    pub mem_cap: Option<MemCap>,
    /// Why the node takes nothing now, if so.
    pub closed: Option<Closed>,
    /// What the node's VMs hold (starting, running, paused, migrating out) and the incoming
    /// migrations it accepted but has not started yet.
    pub held: Load,
}

/// What the node has free for one more VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Free {
    pub slots: u32,
    pub mem_bytes: u64,
}

/// Which bound limits the memory free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemBound {
    /// The politeness cap minus what the VMs hold.
    Cap(MemCap),
    /// The host's `MemAvailable`.
    Available,
    /// Neither is known (no `/proc/meminfo`): nothing is free.
    Unknown,
}

/// Why a VM does not fit; the text names what is short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    Closed(Closed),
    Slots {
        asked: u32,
        used: u32,
        total: u32,
    },
    Memory {
        asked: u64,
        free: u64,
        bound: MemBound,
    },
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Draining => write!(f, "draining: the node takes no VMs until it restarts"),
            Closed::Owner { state, reasons } if reasons.is_empty() => {
                write!(f, "the owner needs the machine (politeness: {state})")
            }
            Closed::Owner { state, reasons } => write!(
                f,
                "the owner needs the machine (politeness: {state}: {})",
                reasons.join(", ")
            ),
        }
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::Closed(c) => c.fmt(f),
            Shortfall::Slots { asked, used, total } => {
                write!(
                    f,
                    "slots: {used} in use of {total}, {asked} asked (one per vCPU)"
                )
            }
            Shortfall::Memory { asked, free, bound } => {
                let (asked, free) = (asked.div_ceil(MIB), free / MIB);
                match bound {
                    MemBound::Cap(cap) => write!(
                        f,
                        "memory: {asked} MiB asked, {free} MiB free under the {}% cap ({} MiB)",
                        cap.pct,
                        cap.bytes / MIB
                    ),
                    MemBound::Available => write!(
                        f,
                        "memory: {asked} MiB asked, {free} MiB available on the host \
                         (MemAvailable)"
                    ),
                    MemBound::Unknown => write!(
                        f,
                        "memory: {asked} MiB asked, but the host's memory is unknown \
                         (/proc/meminfo unreadable)"
                    ),
                }
            }
        }
    }
}

impl Accounting {
    /// The memory free for VMs and the bound that sets it (ignoring `closed`).
    fn mem_free(&self) -> (u64, MemBound) {
        let cap = self
            .mem_cap
            .map(|c| (c.bytes.saturating_sub(self.held.mem_bytes), c));
        match (cap, self.mem_available_bytes) {
            (Some((room, c)), Some(avail)) if room <= avail => (room, MemBound::Cap(c)),
            (Some(_), Some(avail)) | (None, Some(avail)) => (avail, MemBound::Available),
            (Some((room, c)), None) => (room, MemBound::Cap(c)),
            (None, None) => (0, MemBound::Unknown),
        }
    }

    /// What the node has free now: nothing while it is closed.
    pub fn free(&self) -> Free {
        if self.closed.is_some() {
            return Free {
                slots: 0,
                mem_bytes: 0,
            };
        }
        Free {
            slots: self.slots.saturating_sub(self.held.vcpus),
            mem_bytes: self.mem_free().0,
        }
    }

    /// Whether a VM asking for `ask` fits now; else what is short (closed first, then
    /// slots, then memory).
    pub fn admit(&self, ask: Load) -> Result<(), Shortfall> {
        if let Some(c) = &self.closed {
            return Err(Shortfall::Closed(c.clone()));
        }
        let used = self.held.vcpus;
        if used.saturating_add(ask.vcpus) > self.slots {
            return Err(Shortfall::Slots {
                asked: ask.vcpus,
                used,
                total: self.slots,
            });
        }
        let (free, bound) = self.mem_free();
        if ask.mem_bytes > free {
            return Err(Shortfall::Memory {
                asked: ask.mem_bytes,
                free,
                bound,
            });
        }
        Ok(())
    }
}

/// Incoming migrations the node accepted whose VMs it has not recorded yet, by session:
/// what they will hold. The daemon releases one once its VM ran here or failed; one whose
/// source never completed the session lapses after [`RESERVATION_TTL`].
#[derive(Debug, Default)]
pub struct Reservations {
    by_session: HashMap<[u8; 16], Reservation>,
}

#[derive(Debug)]
struct Reservation {
    vm_id: String,
    load: Load,
    until: Duration,
}

impl Reservations {
    pub fn reserve(&mut self, session: [u8; 16], vm_id: &str, load: Load, now: Duration) {
        self.by_session.insert(
            session,
            Reservation {
                vm_id: vm_id.to_string(),
                load,
                until: now + RESERVATION_TTL,
            },
        );
    }

    pub fn release(&mut self, session: &[u8; 16]) {
        self.by_session.remove(session);
    }

    /// Whether a live reservation at `now` is for VM `vm_id` (it is migrating in).
    pub fn holds(&mut self, vm_id: &str, now: Duration) -> bool {
        self.by_session.retain(|_, r| r.until > now);
        self.by_session.values().any(|r| r.vm_id == vm_id)
    }

    /// What the live reservations hold at `now` (lapsed ones are dropped), leaving out VMs
    /// that `recorded` says the node already counts from their records.
    pub fn held(&mut self, now: Duration, recorded: impl Fn(&str) -> bool) -> Load {
        self.by_session.retain(|_, r| r.until > now);
        self.by_session
            .values()
            .filter(|r| !recorded(&r.vm_id))
            .map(|r| r.load)
            .sum()
    }
}

/// What `vms` hold: each its vCPUs and its guest memory (or memory limit).
pub fn held_by(vms: &[VmInfo]) -> Load {
    vms.iter()
        .map(|v| Load::new(v.spec.vcpus, v.spec.mem_mib << 20))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A 2-CPU host with 16 GiB, 10 GiB available, the idle cap (90%), nothing held.
    fn open() -> Accounting {
        Accounting {
            slots: 2,
            mem_total_bytes: Some(16 * GIB),
            mem_available_bytes: Some(10 * GIB),
            mem_cap: Some(MemCap {
                bytes: 16 * GIB * 9 / 10,
                pct: 90,
            }),
            closed: None,
            held: Load::default(),
        }
    }

    #[test]
    fn a_vm_fits_until_the_slots_are_taken() {
        let mut a = open();
        a.admit(Load::new(2, 64 * MIB)).unwrap();
        a.held = Load::new(1, 64 * MIB);
        assert_eq!(a.free().slots, 1);
        a.admit(Load::new(1, 64 * MIB)).unwrap();
        let short = a.admit(Load::new(2, 64 * MIB)).unwrap_err();
        assert_eq!(
            short,
            Shortfall::Slots {
                asked: 2,
                used: 1,
                total: 2
            }
        );
        a.held = Load::new(2, 128 * MIB);
        let text = a.admit(Load::new(1, MIB)).unwrap_err().to_string();
        assert!(text.starts_with("slots: 2 in use of 2"), "{text}");
        assert_eq!(a.free().slots, 0);
        // More held than offered (maxCpusPct lowered, restarted): nothing free, no wrap.
        a.held = Load::new(5, 0);
        assert_eq!(a.free().slots, 0);
    }

    #[test]
    fn memory_is_the_cap_minus_what_vms_hold_or_what_the_host_has_available() {
        // Owner active: the 50% cap of 4 GiB is 2 GiB; VMs hold 1.75 GiB of it.
        let mut a = open();
        a.mem_total_bytes = Some(4 * GIB);
        a.mem_available_bytes = Some(3 * GIB);
        a.mem_cap = Some(MemCap {
            bytes: 2 * GIB,
            pct: 50,
        });
        a.held = Load::new(1, 1792 * MIB);
        assert_eq!(a.free().mem_bytes, 256 * MIB);
        a.admit(Load::new(1, 256 * MIB)).unwrap();
        let short = a.admit(Load::new(1, 512 * MIB)).unwrap_err();
        assert_eq!(
            short.to_string(),
            "memory: 512 MiB asked, 256 MiB free under the 50% cap (2048 MiB)"
        );
        // Other programs took the host's memory: MemAvailable is the tighter bound.
        a.mem_available_bytes = Some(100 * MIB);
        let short = a.admit(Load::new(1, 128 * MIB)).unwrap_err();
        assert!(
            matches!(
                short,
                Shortfall::Memory {
                    free,
                    bound: MemBound::Available,
                    ..
                } if free == 100 * MIB
            ),
            "{short:?}"
        );
        assert!(short.to_string().contains("MemAvailable"), "{short}");
        // Held past the cap (the cap dropped): nothing free, no wrap.
        a.mem_available_bytes = Some(3 * GIB);
        a.held = Load::new(1, 3 * GIB);
        assert_eq!(a.free().mem_bytes, 0);
        // Nothing known about memory: nothing is free.
        a.mem_cap = None;
        a.mem_available_bytes = None;
        assert_eq!(a.free().mem_bytes, 0);
        assert!(a
            .admit(Load::new(1, MIB))
            .unwrap_err()
            .to_string()
            .contains("unknown"));
    }

    #[test]
    fn a_closed_node_has_nothing_free_and_says_why() {
        let mut a = open();
        a.closed = Some(Closed::Draining);
        assert_eq!(
            a.free(),
            Free {
                slots: 0,
                mem_bytes: 0
            }
        );
        let text = a.admit(Load::new(1, MIB)).unwrap_err().to_string();
        assert!(text.starts_with("draining"), "{text}");
        a.closed = Some(Closed::Owner {
            state: "evacuate".into(),
            reasons: vec!["the owner is using the machine".into()],
        });
        let text = a.admit(Load::new(1, MIB)).unwrap_err().to_string();
        assert_eq!(
            text,
            "the owner needs the machine (politeness: evacuate: the owner is using the machine)"
        );
    }

    #[test]
    fn loads_add_up_without_wrapping() {
        let total: Load = [Load::new(2, 64 * MIB), Load::new(1, 32 * MIB)]
            .into_iter()
            .sum();
        assert_eq!(total, Load::new(3, 96 * MIB));
        let huge = Load {
            vcpus: u32::MAX,
            mem_bytes: u64::MAX,
        };
        assert_eq!(huge.plus(total), huge);
    }

    #[test]
    fn reservations_hold_until_recorded_released_or_lapsed() {
        let t0 = Duration::from_secs(7);
        let mut r = Reservations::default();
        r.reserve([1; 16], "a", Load::new(1, 64 * MIB), t0);
        r.reserve([2; 16], "b", Load::new(2, 32 * MIB), t0);
        assert_eq!(r.held(t0, |_| false), Load::new(3, 96 * MIB));
        // b's record exists (starting): counted from the record, not twice.
        assert_eq!(r.held(t0, |id| id == "b"), Load::new(1, 64 * MIB));
        assert!(r.holds("a", t0) && !r.holds("c", t0));
        r.release(&[1; 16]);
        assert!(!r.holds("a", t0));
        assert_eq!(r.held(t0, |_| false), Load::new(2, 32 * MIB));
        // The source never completed b's session.
        assert_eq!(r.held(t0 + RESERVATION_TTL, |_| false), Load::default());
        assert!(r.by_session.is_empty());
    }
}
