//! Short ids: a member's cell-local chitchat node id, its virtual gossip address and the
//! check that binds a gossiped PeerId to it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use libp2p_identity::PeerId;

use super::CellWireError;
use crate::cells::CellId;

/// Port of every virtual address.
pub const VIRTUAL_PORT: u16 = 1;
/// Characters of a [`ShortId`].
pub const SHORT_ID_CHARS: usize = 15;
/// Bits of blake3(peer id bytes) a [`ShortId`] carries (5 per character).
pub const SHORT_ID_BITS: u32 = 75;
/// The key-value under which a member gossips its full PeerId (base58).
pub const PEER_KEY: &str = "peer";

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_value(c: u8) -> Option<u8> {
    match c {
        b'a'..=b'z' => Some(c - b'a'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// A member's chitchat node id: the first [`SHORT_ID_BITS`] bits of blake3(peer id bytes) as
/// [`SHORT_ID_CHARS`] characters of lower-case RFC 4648 base32 (no padding; every such
/// string is canonical). Ordered like the string, as chitchat orders node ids.
///
/// Strength: an accidental collision in a cell of [`MAX_MEMBERS`](super::MAX_MEMBERS) members has probability
/// about 1024² / 2^76 ≈ 2^-56. Taking a given member's short id (to be gossiped to in its
/// place) needs a second preimage: ~2^75 key generations and hashes (millions of GPU-years;
/// 64 bits would be ~2^64, thousands of GPU-years, which a well-funded attacker could buy,
/// and saves only 2 characters). What it cannot do: a birthday search (~2^37.5) finds two
/// keys of the attacker's own with the same short id; those two then share one chitchat
/// identity, which harms only the attacker's own nodes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortId([u8; SHORT_ID_CHARS]);

impl ShortId {
    /// The short id of `peer`.
    pub fn of(peer: &PeerId) -> ShortId {
        let hash = blake3::hash(&peer.to_bytes());
        let mut first = [0u8; 16];
        first[..10].copy_from_slice(&hash.as_bytes()[..10]);
        let bits = u128::from_be_bytes(first);
        let mut out = [0u8; SHORT_ID_CHARS];
        for (i, c) in out.iter_mut().enumerate() {
            let index = (bits >> (128 - 5 * (i + 1))) & 31;
            *c = BASE32[index as usize];
        }
        ShortId(out)
    }

    /// Reads a short id: exactly [`SHORT_ID_CHARS`] characters of `a-z2-7`.
    pub fn parse(s: &str) -> Result<ShortId, CellWireError> {
        let bytes = s.as_bytes();
        if bytes.len() != SHORT_ID_CHARS || !bytes.iter().all(|c| base32_value(*c).is_some()) {
            return Err(CellWireError::NotAShortId(s.to_owned()));
        }
        let mut out = [0u8; SHORT_ID_CHARS];
        out.copy_from_slice(bytes);
        Ok(ShortId(out))
    }

    pub fn as_str(&self) -> &str {
        // Only base32 characters are ever stored: always ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether `peer` has this short id.
    pub fn is_of(&self, peer: &PeerId) -> bool {
        ShortId::of(peer) == *self
    }

    /// The first 32 bits of blake3(peer id bytes): what cell assignment reads.
    fn hash_prefix(&self) -> u32 {
        // 7 characters hold 35 bits; keep the first 32.
        let bits = self.0[..7].iter().fold(0u64, |acc, c| {
            (acc << 5) | u64::from(base32_value(*c).unwrap_or(0))
        });
        (bits >> 3) as u32
    }

    /// Whether the member with this short id belongs to `cell` (the same answer as
    /// [`CellId::contains`] on its PeerId: cells take at most 32 bits of the same hash).
    pub fn in_cell(&self, cell: CellId) -> bool {
        let prefix = match cell.prefix_bits() {
            0 => 0,
            bits => self.hash_prefix() >> (32 - u32::from(bits.min(32))),
        };
        prefix == cell.prefix()
    }

    /// The chitchat gossip address: `[fd ‖ the 15 characters as bytes]:1`. Never routed
    /// (unique local range); the cell transport maps it back to the peer. Made of the id's
    /// own characters so zstd finds the repeat in a digest entry: the address costs ~3 bytes
    /// instead of 15 random ones.
    pub fn virtual_addr(&self) -> SocketAddr {
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[1..].copy_from_slice(&self.0);
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), VIRTUAL_PORT)
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortId({})", self.as_str())
    }
}

/// The chitchat gossip address of a peer: [`ShortId::virtual_addr`] of its short id.
pub fn virtual_addr(peer: &PeerId) -> SocketAddr {
    ShortId::of(peer).virtual_addr()
}

/// Reads a [`PEER_KEY`] value: the PeerId it names if it is canonical base58 and has short
/// id `node`.
pub fn check_peer_key(node: &ShortId, value: &str) -> Result<PeerId, CellWireError> {
    let mismatch = || CellWireError::PeerKeyMismatch {
        node: *node,
        value: value.to_owned(),
    };
    let peer = PeerId::from_str(value).map_err(|_| mismatch())?;
    if peer.to_base58() != value || !node.is_of(&peer) {
        return Err(mismatch());
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell_wire::fixtures::*;
    use crate::cells::cell_id;

    #[test]
    fn virtual_addresses_are_ula_port_1_and_distinct() {
        let a = virtual_addr(&peer(1));
        let b = virtual_addr(&peer(2));
        assert_ne!(a, b);
        assert_eq!(a, virtual_addr(&peer(1)));
        for addr in [a, b] {
            assert_eq!(addr.port(), VIRTUAL_PORT);
            match addr.ip() {
                IpAddr::V6(ip) => assert_eq!(ip.octets()[0], 0xfd),
                IpAddr::V4(_) => panic!("not IPv6"),
            }
        }
        match a.ip() {
            IpAddr::V6(ip) => assert_eq!(&ip.octets()[1..], sid(1).as_str().as_bytes()),
            IpAddr::V4(_) => unreachable!(),
        }
    }

    /// Reference: the first 75 bits of the hash, 5 at a time, most significant first.
    fn base32_of_hash(peer: &PeerId) -> String {
        let hash = blake3::hash(&peer.to_bytes());
        let bits: String = hash.as_bytes()[..10]
            .iter()
            .map(|b| format!("{b:08b}"))
            .collect();
        (0..SHORT_ID_CHARS)
            .map(|i| {
                let v = u8::from_str_radix(&bits[5 * i..5 * i + 5], 2).unwrap();
                BASE32[usize::from(v)] as char
            })
            .collect()
    }

    #[test]
    fn short_ids_are_base32_of_the_hash_and_know_their_cell() {
        for i in 0..64u8 {
            let p = peer(i);
            let id = ShortId::of(&p);
            assert_eq!(id.as_str(), base32_of_hash(&p));
            assert_eq!(id.as_str().len(), SHORT_ID_CHARS);
            assert_eq!(ShortId::parse(id.as_str()), Ok(id));
            assert!(id.is_of(&p));
            assert!(!id.is_of(&peer(i.wrapping_add(1))));
            assert_eq!(id.to_string(), id.as_str());
            for bits in [0u8, 1, 3, 8, 13, 31, 32] {
                let cell = cell_id(&p, bits);
                assert!(id.in_cell(cell), "{i} at {bits} bits");
                let other = cell_id(&peer(i.wrapping_add(1)), bits);
                assert_eq!(id.in_cell(other), other == cell);
            }
        }
        // Random peers too (not only seed identities).
        for _ in 0..200 {
            let p = PeerId::random();
            let id = ShortId::of(&p);
            assert_eq!(id.as_str(), base32_of_hash(&p));
            assert!(id.in_cell(cell_id(&p, 32)));
            assert!(id.in_cell(cell_id(&p, 17)));
        }
        // Ordered like the strings, as chitchat orders node ids.
        let mut ids: Vec<ShortId> = (0..20).map(sid).collect();
        ids.sort();
        let strs: Vec<&str> = ids.iter().map(ShortId::as_str).collect();
        let mut sorted = strs.clone();
        sorted.sort();
        assert_eq!(strs, sorted);
    }
}
