//! How many connections a listener holds, and from whom: a cap for the listener, a cap per
//! remote address, a few places kept for callers on the node's own machine, and never more
//! than the file descriptors the node can spare.
//!
//! The decision ([`admit`]) is pure; [`ConnectionGate`] keeps the counts and hands out a
//! [`ConnectionPermit`] that gives its place back when dropped, whatever ends the connection
//! (a close, an idle cut, a WebSocket that ends long after its upgrade).
//!
//! An IPv6 caller counts by its /64 (one host usually holds a whole /64, so per-address
//! counting would give it 2^64 places); an IPv4-mapped IPv6 caller counts as its IPv4
//! address. Callers on the node's own machine (loopback) have no per-address cap — they are
//! the operator, trusted without a token, and one address for every local tool (CLI,
//! dashboard, benchmarks) — and get [`LOOPBACK_RESERVE`] places beyond the listener's cap,
//! so the operator still gets in while remote callers fill the API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Places beyond the listener's cap that only loopback callers may take.
pub const LOOPBACK_RESERVE: usize = 16;

/// File descriptors left to the node's own work (mesh connections, VMM sockets, the
/// database, chunk files) whatever the API's caps say.
pub const NODE_FD_RESERVE: u64 = 1024;

/// The fewest places a listener keeps when the descriptor limit is tight.
const MIN_LISTENER_CAP: usize = 8;

/// The caps one listener applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Connections open at once from everyone (loopback callers get [`LOOPBACK_RESERVE`] more).
    pub max: usize,
    /// Connections open at once from one address (an IPv6 /64).
    pub per_address: usize,
}

impl ConnectionCaps {
    /// These caps, lowered so the listener can never take the descriptors the node needs:
    /// at most `fd_limit` (the soft `RLIMIT_NOFILE`) minus [`NODE_FD_RESERVE`], loopback
    /// reserve included.
    pub fn within_fd_limit(self, fd_limit: u64) -> ConnectionCaps {
        let spare = fd_limit.saturating_sub(NODE_FD_RESERVE) as usize;
        let max = self
            .max
            .min(spare.saturating_sub(LOOPBACK_RESERVE))
            .max(MIN_LISTENER_CAP);
        ConnectionCaps {
            max,
            per_address: self.per_address.min(max),
        }
    }
}

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds its cap of connections.
    ListenerFull { max: usize },
    /// This caller's address holds its cap.
    AddressFull { per_address: usize },
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ListenerFull { .. } => "listener_full",
            Refusal::AddressFull { .. } => "address_full",
        }
    }

    /// What the caller is told.
    pub fn message(self) -> String {
        match self {
            Refusal::ListenerFull { max } => {
                format!("the node's API holds its cap of {max} connections; try again soon")
            }
            Refusal::AddressFull { per_address } => format!(
                "your address holds its cap of {per_address} connections to this API; close some"
            ),
        }
    }
}

/// Whether one more connection from a caller fits: `open` connections in all, `from_address`
/// from the caller's address (pure).
pub fn admit(
    caps: ConnectionCaps,
    open: usize,
    from_address: usize,
    loopback: bool,
) -> Result<(), Refusal> {
    let max = if loopback {
        caps.max + LOOPBACK_RESERVE
    } else {
        caps.max
    };
    if open >= max {
        return Err(Refusal::ListenerFull { max: caps.max });
    }
    if !loopback && from_address >= caps.per_address {
        return Err(Refusal::AddressFull {
            per_address: caps.per_address,
        });
    }
    Ok(())
}

/// What callers are counted by: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    AddressKey::V6Prefix(prefix)
                }
            },
        }
    }
}

#[derive(Default)]
struct Counts {
    open: usize,
    by_address: HashMap<AddressKey, usize>,
}

type Observer = Box<dyn Fn(usize) + Send + Sync>;

/// The counts of one listener.
pub struct ConnectionGate {
    caps: ConnectionCaps,
    counts: Mutex<Counts>,
    /// Told the number of open connections after every change (a metrics gauge).
    observer: Option<Observer>,
}

impl ConnectionGate {
    #[cfg(test)]
    pub fn new(caps: ConnectionCaps) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            caps,
            counts: Mutex::new(Counts::default()),
            observer: None,
        })
    }

    /// A gate that tells `observer` the open count after every change.
    pub fn observed(
        caps: ConnectionCaps,
        observer: impl Fn(usize) + Send + Sync + 'static,
    ) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            caps,
            counts: Mutex::new(Counts::default()),
            observer: Some(Box::new(observer)),
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Takes a place for a connection from `ip`, or says why there is none.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let key = AddressKey::of(ip);
        let mut counts = self.lock();
        let from_address = counts.by_address.get(&key).copied().unwrap_or(0);
        admit(
            self.caps,
            counts.open,
            from_address,
            super::auth::is_loopback(ip),
        )?;
        counts.open += 1;
        *counts.by_address.entry(key).or_insert(0) += 1;
        self.observe(counts.open);
        Ok(ConnectionPermit {
            gate: self.clone(),
            key,
        })
    }

    fn observe(&self, open: usize) {
        if let Some(observer) = &self.observer {
            observer(open);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection's place; given back on drop.
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    key: AddressKey,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.gate.lock();
        counts.open = counts.open.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.key);
            }
        }
        self.gate.observe(counts.open);
    }
}

impl std::fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("key", &self.key)
            .finish()
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (at most 1 Mi), as servers
/// do at start: the soft limit a shell gives (often 1,024) is a default for programs that
/// never asked, not a budget chosen for a node. Returns the soft limit now.
pub fn raise_fd_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return None;
        }
        let want = rl.rlim_max.min(1 << 20);
        if want > rl.rlim_cur {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "cannot raise RLIMIT_NOFILE"
                );
            }
        }
    }
    fd_limit()
}

/// The soft `RLIMIT_NOFILE` of this process (None when it cannot be read or is unlimited).
pub fn fd_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0
        || rl.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(rl.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: ConnectionCaps = ConnectionCaps {
        max: 4,
        per_address: 2,
    };

    #[test]
    fn the_listener_cap_and_the_address_cap_both_hold() {
        assert_eq!(admit(CAPS, 0, 0, false), Ok(()));
        assert_eq!(admit(CAPS, 3, 1, false), Ok(()));
        assert_eq!(
            admit(CAPS, 1, 2, false),
            Err(Refusal::AddressFull { per_address: 2 })
        );
        assert_eq!(
            admit(CAPS, 4, 0, false),
            Err(Refusal::ListenerFull { max: 4 })
        );
        // Loopback callers get the reserve beyond the listener's cap, and no per-address cap.
        assert_eq!(admit(CAPS, 4, 0, true), Ok(()));
        assert_eq!(admit(CAPS, 4 + LOOPBACK_RESERVE - 1, 19, true), Ok(()));
        assert_eq!(
            admit(CAPS, 4 + LOOPBACK_RESERVE, 0, true),
            Err(Refusal::ListenerFull { max: 4 })
        );
    }

    #[test]
    fn ipv6_callers_count_by_their_64_and_mapped_ones_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddressKey::of(a), AddressKey::of(b));
        assert_ne!(AddressKey::of(a), AddressKey::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(AddressKey::of(mapped), AddressKey::of(v4));
    }

    #[test]
    fn permits_count_and_give_their_place_back() {
        let gate = ConnectionGate::new(CAPS);
        let remote = |last: u8| IpAddr::from([192, 0, 2, last]);
        let a1 = gate.enter(remote(1)).unwrap();
        let a2 = gate.enter(remote(1)).unwrap();
        assert_eq!(
            gate.enter(remote(1)).unwrap_err(),
            Refusal::AddressFull { per_address: 2 }
        );
        let b1 = gate.enter(remote(2)).unwrap();
        let _b2 = gate.enter(remote(2)).unwrap();
        assert_eq!(
            gate.enter(remote(3)).unwrap_err(),
            Refusal::ListenerFull { max: 4 }
        );
        let local = gate.enter(IpAddr::from([127, 0, 0, 1])).unwrap();
        assert_eq!(gate.open(), 5);
        drop(a1);
        drop(b1);
        drop(local);
        assert_eq!(gate.open(), 2);
        let _a3 = gate.enter(remote(1)).unwrap();
        let _c1 = gate.enter(remote(3)).unwrap();
        drop(a2);
        assert_eq!(gate.open(), 3);
    }

    #[test]
    fn caps_leave_the_node_its_descriptors() {
        let caps = ConnectionCaps {
            max: 256,
            per_address: 32,
        };
        assert_eq!(caps.within_fd_limit(65536), caps);
        // 1024 descriptors in all: the node's reserve takes them; the listener keeps its floor.
        assert_eq!(
            caps.within_fd_limit(1024),
            ConnectionCaps {
                max: MIN_LISTENER_CAP,
                per_address: MIN_LISTENER_CAP
            }
        );
        let tight = caps.within_fd_limit(1024 + 116);
        assert_eq!(tight.max, 100);
        assert_eq!(tight.per_address, 32);
        assert!(tight.max + LOOPBACK_RESERVE <= 116);
    }
}
