//! The NovaCron paravirtual report port (see `layout::PV_PORT_*`): a guest latches a 64-bit
//! value in two 32-bit halves, then writes an event code that commits (code, value).

use crate::machine::layout::{PV_PORT_EVENT, PV_PORT_VALUE_HI, PV_PORT_VALUE_LO};
use crate::machine::state::PvPortSnapshot;

/// One report from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvReport {
    pub code: u32,
    pub value: u64,
}

#[derive(Debug, Default)]
pub struct PvPort {
    value_lo: u32,
    value_hi: u32,
}

impl PvPort {
    pub fn restore(&mut self, s: &PvPortSnapshot) {
        self.value_lo = s.value_lo;
        self.value_hi = s.value_hi;
    }

    pub fn snapshot(&self) -> PvPortSnapshot {
        PvPortSnapshot {
            value_lo: self.value_lo,
            value_hi: self.value_hi,
        }
    }

    /// Handles a write; returns the committed report when the event port was written.
    /// Writes that are not 32 bits wide are ignored (a real device would do the same).
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<PvReport> {
        let word = u32::from_le_bytes(data.try_into().ok()?);
        match port {
            PV_PORT_VALUE_LO => self.value_lo = word,
            PV_PORT_VALUE_HI => self.value_hi = word,
            PV_PORT_EVENT => {
                return Some(PvReport {
                    code: word,
                    value: u64::from(self.value_hi) << 32 | u64::from(self.value_lo),
                })
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_commits_latched_value() {
        let mut p = PvPort::default();
        assert_eq!(
            p.write(PV_PORT_VALUE_LO, &0xdead_beefu32.to_le_bytes()),
            None
        );
        assert_eq!(p.write(PV_PORT_VALUE_HI, &7u32.to_le_bytes()), None);
        assert_eq!(
            p.write(PV_PORT_EVENT, &3u32.to_le_bytes()),
            Some(PvReport {
                code: 3,
                value: 0x7_dead_beef
            })
        );
        assert_eq!(p.write(PV_PORT_EVENT, &[1, 2]), None);
    }
}
