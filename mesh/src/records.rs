//! Signed node records: what a node says about itself (addresses, capacity, version,
//! reachability), signed with its [`NodeIdentity`], with a sequence number and an expiry.
//!
//! Wire form: one rkyv archive of [`SignedRecord`] `{ record_bytes, signature, public_key }`,
//! where `record_bytes` is an rkyv archive of [`NodeRecord`] and `signature` is ed25519 over
//! `NODE_RECORD_DOMAIN || record_bytes`. [`SignedRecord::verify`] refuses, in this order: more
//! than [`MAX_SIGNED_RECORD_LEN`] bytes, an envelope or record that fails bytecheck, a field
//! over its limit, a public key whose PeerId is not the record's, a bad signature, a bad
//! lifetime, an expired record and one issued more than [`MAX_CLOCK_SKEW_S`] in the future.
//!
//! The envelope is generic over a domain string ([`SignedRecord::seal`],
//! [`SignedRecord::open`]) so cell summaries reuse it with a domain of their own; a signature
//! made for one domain never verifies in another.
//!
//! What this cannot do: listen addresses are bounded strings, not parsed multiaddrs (the swarm
//! parses them); a record proves who said it, not that it is true (capacity is self-reported);
//! and the encoding is not canonical (several archives can hold one record), so compare
//! records, not bytes. A node must keep its sequence numbers growing across restarts (e.g.
//! derive them from the clock); [`RecordBook`] refuses anything not newer.

use std::collections::BTreeMap;
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use libp2p_identity::PeerId;
use rkyv::{Archive, Deserialize, Serialize};

use crate::identity::{peer_id_of_public, NodeIdentity};

/// Domain string prepended to a node record before signing.
pub const NODE_RECORD_DOMAIN: &[u8] = b"novacron-node-record-v1";

/// Largest signed record (envelope included) accepted; checked before anything else.
pub const MAX_SIGNED_RECORD_LEN: usize = 4096;

/// Longest peer id in bytes (an ed25519 PeerId is 38).
pub const MAX_PEER_ID_LEN: usize = 64;

/// Most listen addresses in one record.
pub const MAX_LISTEN_ADDRS: usize = 8;

/// Longest listen address (multiaddr text) in bytes.
pub const MAX_ADDR_LEN: usize = 256;

/// Longest software version string in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// How far in the future (by our clock) an issued-at time may be.
pub const MAX_CLOCK_SKEW_S: u64 = 5 * 60;

/// Longest lifetime (expiry minus issued-at) of a record.
pub const MAX_RECORD_LIFETIME_S: u64 = 24 * 60 * 60;

/// Load is in thousandths of the node's capacity; full load is this.
pub const MAX_LOAD_PERMILLE: u16 = 1000;

/// Whether others can dial the node directly.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reachability {
    /// Confirmed dialable from the Internet (autonat).
    Public,
    /// Behind NAT or a firewall: reach it through a relay.
    Private,
    /// Not yet known.
    Unknown,
}

/// What a node offers. `free_*` never exceed their totals.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capacity {
    pub vcpus: u32,
    pub free_vcpus: u32,
    pub memory_bytes: u64,
    pub free_memory_bytes: u64,
    /// How many more jobs the node would take now.
    pub free_slots: u32,
    /// Recent load, 0..=[`MAX_LOAD_PERMILLE`].
    pub load_permille: u16,
}

/// What a node says about itself.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's PeerId in its byte form (a multihash).
    pub peer_id: Vec<u8>,
    /// Grows with every new record the node issues.
    pub seq: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the record is void from then on.
    pub expires_at: u64,
    /// Multiaddrs as text.
    pub listen_addrs: Vec<String>,
    pub capacity: Capacity,
    pub version: String,
    pub reachability: Reachability,
}

/// Why a record (or summary) is refused; each names the field, value or limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{what} of {len} bytes is not a valid archive: {reason}")]
    Malformed {
        what: &'static str,
        len: usize,
        reason: String,
    },
    #[error("cannot archive {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("field {field} is {len} bytes, more than the limit of {limit}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("field {field} has {count} entries, more than the limit of {limit}")]
    TooMany {
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("field {field} is {value}, more than {limit}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("field {field} is not a valid peer id: {reason}")]
    BadPeerId { field: &'static str, reason: String },
    #[error("public key is not a valid ed25519 key: {reason}")]
    BadPublicKey { reason: String },
    #[error("signed by {signer}, but the record is about {claimed}")]
    KeyMismatch { signer: String, claimed: String },
    #[error("signature by {signer} does not verify over {domain}")]
    BadSignature { signer: String, domain: String },
    #[error("lifetime from issued_at {issued_at} to expires_at {expires_at} is not within 1..={limit} s")]
    BadLifetime {
        issued_at: u64,
        expires_at: u64,
        limit: u64,
    },
    #[error("expired at {expires_at}, now is {now}")]
    Expired { expires_at: u64, now: u64 },
    #[error("issued at {issued_at}, more than {skew} s after now ({now})")]
    FromTheFuture { issued_at: u64, now: u64, skew: u64 },
    #[error("field {field}: peer {peer} is not in cell {cell}")]
    NotInCell {
        field: &'static str,
        peer: String,
        cell: String,
    },
    #[error("summary signed by {signer}, who is not one of its contacts")]
    SignerNotContact { signer: String },
    #[error("cannot sign a record about {claimed} with the key of {signer}")]
    NotOurs { signer: String, claimed: String },
    #[error("record of {peer} has sequence number {got}, not newer than the {have} already held")]
    Stale { peer: String, have: u64, got: u64 },
    #[error("record book is full ({limit} peers); prune it first")]
    BookFull { limit: usize },
}

/// A signed envelope: payload bytes, ed25519 signature over `domain || payload`, signer key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignedRecord {
    pub record_bytes: Vec<u8>,
    pub signature: [u8; 64],
    pub public_key: [u8; 32],
}

/// Archives any value of this module for signing or sending.
pub(crate) fn archive<T>(what: &'static str, value: &T) -> Result<Vec<u8>, RecordError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(value)
        .map(|bytes| bytes.to_vec())
        .map_err(|e| RecordError::Encode {
            what,
            reason: e.to_string(),
        })
}

/// Validates (bytecheck) and deserialises an archive of bytes from outside.
pub(crate) fn unarchive<T>(what: &'static str, bytes: &[u8]) -> Result<T, RecordError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    // rkyv reads in place and needs alignment; bytes off a socket have none.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned).map_err(|e| RecordError::Malformed {
        what,
        len: bytes.len(),
        reason: e.to_string(),
    })
}

/// The message an envelope's signature covers.
fn signed_message(domain: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + payload.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(payload);
    msg
}

/// Refuses a field longer than `limit` bytes.
pub(crate) fn check_len(field: &'static str, len: usize, limit: usize) -> Result<(), RecordError> {
    if len > limit {
        return Err(RecordError::FieldTooLong { field, len, limit });
    }
    Ok(())
}

/// Refuses a list with more than `limit` entries.
pub(crate) fn check_count(
    field: &'static str,
    count: usize,
    limit: usize,
) -> Result<(), RecordError> {
    if count > limit {
        return Err(RecordError::TooMany {
            field,
            count,
            limit,
        });
    }
    Ok(())
}

/// Refuses `value > limit`.
pub(crate) fn check_at_most(
    field: &'static str,
    value: u64,
    limit: u64,
) -> Result<(), RecordError> {
    if value > limit {
        return Err(RecordError::OutOfRange {
            field,
            value,
            limit,
        });
    }
    Ok(())
}

/// Parses peer id bytes from outside (length-bounded first).
pub(crate) fn parse_peer_id(field: &'static str, bytes: &[u8]) -> Result<PeerId, RecordError> {
    check_len(field, bytes.len(), MAX_PEER_ID_LEN)?;
    PeerId::from_bytes(bytes).map_err(|e| RecordError::BadPeerId {
        field,
        reason: e.to_string(),
    })
}

/// Checks a signed statement's validity window (unix seconds, as on the wire) against `now`
/// (since the unix epoch: these windows are compared across machines).
pub fn check_validity(issued_at: u64, expires_at: u64, now: Duration) -> Result<(), RecordError> {
    let now = now.as_secs();
    let lifetime = expires_at.saturating_sub(issued_at);
    if lifetime == 0 || lifetime > MAX_RECORD_LIFETIME_S {
        return Err(RecordError::BadLifetime {
            issued_at,
            expires_at,
            limit: MAX_RECORD_LIFETIME_S,
        });
    }
    if now >= expires_at {
        return Err(RecordError::Expired { expires_at, now });
    }
    if issued_at > now.saturating_add(MAX_CLOCK_SKEW_S) {
        return Err(RecordError::FromTheFuture {
            issued_at,
            now,
            skew: MAX_CLOCK_SKEW_S,
        });
    }
    Ok(())
}

impl Capacity {
    /// Refuses free amounts above totals and a load above full.
    pub fn check_limits(&self) -> Result<(), RecordError> {
        check_at_most(
            "capacity.free_vcpus",
            self.free_vcpus.into(),
            self.vcpus.into(),
        )?;
        check_at_most(
            "capacity.free_memory_bytes",
            self.free_memory_bytes,
            self.memory_bytes,
        )?;
        check_at_most(
            "capacity.load_permille",
            self.load_permille.into(),
            MAX_LOAD_PERMILLE.into(),
        )
    }
}

impl NodeRecord {
    /// The record's archive (what [`SignedRecord::sign`] signs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        archive("node record", self)
    }

    /// Validates (bytecheck) and reads a record archive; checks no limit and no signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<NodeRecord, RecordError> {
        unarchive("node record", bytes)
    }

    /// The record's subject as a PeerId.
    pub fn peer_id(&self) -> Result<PeerId, RecordError> {
        parse_peer_id("peer_id", &self.peer_id)
    }

    /// Refuses any field over its limit (time is checked separately, against a clock).
    pub fn check_limits(&self) -> Result<(), RecordError> {
        self.peer_id()?;
        check_count("listen_addrs", self.listen_addrs.len(), MAX_LISTEN_ADDRS)?;
        for addr in &self.listen_addrs {
            check_len("listen_addrs[]", addr.len(), MAX_ADDR_LEN)?;
        }
        check_len("version", self.version.len(), MAX_VERSION_LEN)?;
        self.capacity.check_limits()
    }
}

impl SignedRecord {
    /// Signs `payload` under `domain` with `identity`.
    pub fn seal(identity: &NodeIdentity, domain: &[u8], payload: Vec<u8>) -> SignedRecord {
        let signature = identity.sign(&signed_message(domain, &payload));
        SignedRecord {
            record_bytes: payload,
            signature,
            public_key: identity.public().to_bytes(),
        }
    }

    /// Checks the signature over `domain || record_bytes`; returns the signer's PeerId.
    /// The payload is not looked at: the caller checks that it names this signer.
    pub fn open(&self, domain: &[u8]) -> Result<PeerId, RecordError> {
        let key =
            VerifyingKey::from_bytes(&self.public_key).map_err(|e| RecordError::BadPublicKey {
                reason: e.to_string(),
            })?;
        let signer = peer_id_of_public(&key).map_err(|e| RecordError::BadPublicKey {
            reason: e.to_string(),
        })?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&signed_message(domain, &self.record_bytes), &signature)
            .map_err(|_| RecordError::BadSignature {
                signer: signer.to_string(),
                domain: String::from_utf8_lossy(domain).into_owned(),
            })?;
        Ok(signer)
    }

    /// Refuses more than `limit` bytes, then validates the envelope archive.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<SignedRecord, RecordError> {
        if bytes.len() > limit {
            return Err(RecordError::TooLarge {
                what: "signed record",
                len: bytes.len(),
                limit,
            });
        }
        unarchive("signed record", bytes)
    }

    /// The envelope's wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        archive("signed record", self)
    }

    /// Signs `record` as `identity`, refusing a record about another peer or over a limit
    /// (what others would refuse is never sent).
    pub fn sign(identity: &NodeIdentity, record: &NodeRecord) -> Result<SignedRecord, RecordError> {
        record.check_limits()?;
        let claimed = record.peer_id()?;
        if claimed != identity.peer_id() {
            return Err(RecordError::NotOurs {
                signer: identity.peer_id().to_string(),
                claimed: claimed.to_string(),
            });
        }
        let signed = SignedRecord::seal(identity, NODE_RECORD_DOMAIN, record.to_bytes()?);
        let len = signed.encode()?.len();
        if len > MAX_SIGNED_RECORD_LEN {
            return Err(RecordError::TooLarge {
                what: "signed record",
                len,
                limit: MAX_SIGNED_RECORD_LEN,
            });
        }
        Ok(signed)
    }

    /// Checks wire bytes from anyone and returns the record they carry.
    pub fn verify(bytes: &[u8], now: Duration) -> Result<NodeRecord, RecordError> {
        let signed = SignedRecord::decode(bytes, MAX_SIGNED_RECORD_LEN)?;
        let record = NodeRecord::from_bytes(&signed.record_bytes)?;
        record.check_limits()?;
        let claimed = record.peer_id()?;
        signed.check_signed_by(
            NODE_RECORD_DOMAIN,
            &claimed,
            (record.issued_at, record.expires_at),
            now,
        )?;
        Ok(record)
    }

    /// The envelope's signature is valid under `domain`, made by `claimed`'s key, and the
    /// payload's lifetime (`issued_at`, `expires_at`) holds at `now`.
    pub fn check_signed_by(
        &self,
        domain: &[u8],
        claimed: &PeerId,
        (issued_at, expires_at): (u64, u64),
        now: Duration,
    ) -> Result<(), RecordError> {
        let signer = self.open(domain)?;
        if signer != *claimed {
            return Err(RecordError::KeyMismatch {
                signer: signer.to_string(),
                claimed: claimed.to_string(),
            });
        }
        check_validity(issued_at, expires_at, now)
    }
}

/// The newest record of each peer. Pure: no IO, no clock (callers pass `now`, since the unix
/// epoch).
///
/// Feed it only records returned by [`SignedRecord::verify`]: it checks sequence numbers and
/// expiry, not signatures. It holds at most `limit` peers, so a flood of fresh identities
/// cannot grow it without bound (new peers are refused while it is full).
#[derive(Debug, Clone)]
pub struct RecordBook {
    records: BTreeMap<PeerId, NodeRecord>,
    limit: usize,
}

impl RecordBook {
    /// An empty book holding at most `limit` peers.
    pub fn new(limit: usize) -> RecordBook {
        RecordBook {
            records: BTreeMap::new(),
            limit,
        }
    }

    /// Keeps `record` if it is newer than what the book holds for its peer; returns the record
    /// it replaced. Refuses expired records, older or equal sequence numbers, and new peers
    /// while the book is full.
    pub fn insert(
        &mut self,
        record: NodeRecord,
        now: Duration,
    ) -> Result<Option<NodeRecord>, RecordError> {
        let peer = record.peer_id()?;
        let now = now.as_secs();
        if now >= record.expires_at {
            return Err(RecordError::Expired {
                expires_at: record.expires_at,
                now,
            });
        }
        match self.records.get(&peer) {
            Some(have) if record.seq <= have.seq => Err(RecordError::Stale {
                peer: peer.to_string(),
                have: have.seq,
                got: record.seq,
            }),
            None if self.records.len() >= self.limit => {
                Err(RecordError::BookFull { limit: self.limit })
            }
            _ => Ok(self.records.insert(peer, record)),
        }
    }

    /// The record held for `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<&NodeRecord> {
        self.records.get(peer)
    }

    /// Forgets `peer`.
    pub fn remove(&mut self, peer: &PeerId) -> Option<NodeRecord> {
        self.records.remove(peer)
    }

    /// Drops every record expired at `now`; returns how many went.
    pub fn prune(&mut self, now: Duration) -> usize {
        let now = now.as_secs();
        let before = self.records.len();
        self.records.retain(|_, r| now < r.expires_at);
        before - self.records.len()
    }

    /// Peers and records, in PeerId order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &NodeRecord)> {
        self.records.iter()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn identity(n: u8) -> NodeIdentity {
        NodeIdentity::from_seed(&[n; 32]).unwrap()
    }

    pub(crate) fn record_for(id: &NodeIdentity, seq: u64) -> NodeRecord {
        NodeRecord {
            peer_id: id.peer_id().to_bytes(),
            seq,
            issued_at: NOW,
            expires_at: NOW + 3600,
            listen_addrs: vec![
                "/ip4/192.0.2.7/udp/4001/quic-v1".into(),
                "/ip4/192.0.2.7/tcp/4001".into(),
            ],
            capacity: Capacity {
                vcpus: 8,
                free_vcpus: 6,
                memory_bytes: 16 << 30,
                free_memory_bytes: 12 << 30,
                free_slots: 3,
                load_permille: 250,
            },
            version: "0.1.0".into(),
            reachability: Reachability::Public,
        }
    }

    fn signed_bytes(id: &NodeIdentity, record: &NodeRecord) -> Vec<u8> {
        SignedRecord::sign(id, record).unwrap().encode().unwrap()
    }

    /// Seals `record` without `sign`'s checks, as a hostile peer could.
    fn forged(id: &NodeIdentity, record: &NodeRecord) -> Vec<u8> {
        let payload = archive("node record", record).unwrap();
        SignedRecord::seal(id, NODE_RECORD_DOMAIN, payload)
            .encode()
            .unwrap()
    }

    #[test]
    fn a_signed_record_verifies_to_the_same_record() {
        let id = identity(1);
        let record = record_for(&id, 7);
        let bytes = signed_bytes(&id, &record);
        assert!(bytes.len() <= MAX_SIGNED_RECORD_LEN);
        assert_eq!(
            SignedRecord::verify(&bytes, Duration::from_secs(NOW)).unwrap(),
            record
        );
        assert_eq!(
            SignedRecord::verify(&bytes, Duration::from_secs(NOW))
                .unwrap()
                .peer_id()
                .unwrap(),
            id.peer_id()
        );
    }

    #[test]
    fn a_record_at_every_limit_still_fits_the_size_limit() {
        let id = identity(2);
        let mut record = record_for(&id, 1);
        record.listen_addrs = vec!["a".repeat(MAX_ADDR_LEN); MAX_LISTEN_ADDRS];
        record.version = "v".repeat(MAX_VERSION_LEN);
        let bytes = signed_bytes(&id, &record);
        assert!(
            bytes.len() <= MAX_SIGNED_RECORD_LEN,
            "{} bytes",
            bytes.len()
        );
        assert_eq!(
            SignedRecord::verify(&bytes, Duration::from_secs(NOW)).unwrap(),
            record
        );
    }

    #[test]
    fn refuses_oversized_input_before_parsing_it() {
        let junk = vec![0u8; MAX_SIGNED_RECORD_LEN + 1];
        let err = SignedRecord::verify(&junk, Duration::from_secs(NOW)).unwrap_err();
        assert!(
            matches!(err, RecordError::TooLarge { len, .. } if len == MAX_SIGNED_RECORD_LEN + 1)
        );
    }

    #[test]
    fn refuses_garbage_and_truncations() {
        let id = identity(3);
        let bytes = signed_bytes(&id, &record_for(&id, 1));
        for len in [0, 1, 16, bytes.len() / 2, bytes.len() - 1] {
            let err = SignedRecord::verify(&bytes[..len], Duration::from_secs(NOW)).unwrap_err();
            assert!(
                matches!(err, RecordError::Malformed { .. }),
                "len {len}: {err}"
            );
        }
        let err = SignedRecord::verify(&[0xA5; 300], Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::Malformed { .. }), "{err}");
    }

    #[test]
    fn refuses_an_envelope_whose_payload_is_not_a_record() {
        let id = identity(4);
        let signed = SignedRecord::seal(&id, NODE_RECORD_DOMAIN, vec![0xEE; 40]);
        let err =
            SignedRecord::verify(&signed.encode().unwrap(), Duration::from_secs(NOW)).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::Malformed {
                    what: "node record",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_flipped_bit_in_the_record_or_signature() {
        let id = identity(5);
        let record = record_for(&id, 1);
        let mut signed = SignedRecord::sign(&id, &record).unwrap();
        signed.signature[10] ^= 1;
        let err =
            SignedRecord::verify(&signed.encode().unwrap(), Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::BadSignature { .. }), "{err}");

        let mut tampered = record.clone();
        tampered.capacity.free_slots = 1000;
        let mut signed = SignedRecord::sign(&id, &record).unwrap();
        signed.record_bytes = archive("node record", &tampered).unwrap();
        let err =
            SignedRecord::verify(&signed.encode().unwrap(), Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn refuses_a_record_signed_by_another_key() {
        let victim = identity(6);
        let attacker = identity(7);
        let bytes = forged(&attacker, &record_for(&victim, 1));
        let err = SignedRecord::verify(&bytes, Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&victim.peer_id().to_string()));
    }

    #[test]
    fn sign_refuses_a_record_about_another_peer() {
        let err = SignedRecord::sign(&identity(6), &record_for(&identity(7), 1)).unwrap_err();
        assert!(matches!(err, RecordError::NotOurs { .. }), "{err}");
    }

    #[test]
    fn refuses_a_signature_made_for_another_domain() {
        let id = identity(8);
        let payload = archive("node record", &record_for(&id, 1)).unwrap();
        let signed = SignedRecord::seal(&id, b"novacron-cell-summary-v1", payload);
        let err =
            SignedRecord::verify(&signed.encode().unwrap(), Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn refuses_an_invalid_public_key() {
        let id = identity(9);
        let mut signed = SignedRecord::sign(&id, &record_for(&id, 1)).unwrap();
        // The first compressed y coordinate that is not on the curve.
        let off_curve = (0u8..=255)
            .map(|y| {
                let mut key = [0u8; 32];
                key[0] = y;
                key
            })
            .find(|key| VerifyingKey::from_bytes(key).is_err())
            .unwrap();
        signed.public_key = off_curve;
        let err =
            SignedRecord::verify(&signed.encode().unwrap(), Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::BadPublicKey { .. }), "{err}");
    }

    #[test]
    fn refuses_expired_records() {
        let id = identity(10);
        let record = record_for(&id, 1);
        let bytes = signed_bytes(&id, &record);
        assert!(SignedRecord::verify(&bytes, Duration::from_secs(record.expires_at - 1)).is_ok());
        let err = SignedRecord::verify(&bytes, Duration::from_secs(record.expires_at)).unwrap_err();
        assert!(matches!(err, RecordError::Expired { .. }), "{err}");
    }

    #[test]
    fn refuses_records_issued_in_the_future_beyond_the_skew() {
        let id = identity(11);
        let record = record_for(&id, 1);
        let bytes = signed_bytes(&id, &record);
        assert!(SignedRecord::verify(&bytes, Duration::from_secs(NOW - MAX_CLOCK_SKEW_S)).is_ok());
        let err = SignedRecord::verify(&bytes, Duration::from_secs(NOW - MAX_CLOCK_SKEW_S - 1))
            .unwrap_err();
        assert!(matches!(err, RecordError::FromTheFuture { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_lifetimes() {
        let id = identity(12);
        for (issued, expires) in [
            (NOW, NOW),
            (NOW, NOW - 1),
            (NOW, NOW + MAX_RECORD_LIFETIME_S + 1),
        ] {
            let mut record = record_for(&id, 1);
            record.issued_at = issued;
            record.expires_at = expires;
            let err = SignedRecord::verify(&signed_bytes(&id, &record), Duration::from_secs(NOW))
                .unwrap_err();
            assert!(matches!(err, RecordError::BadLifetime { .. }), "{err}");
        }
    }

    type Edit = Box<dyn Fn(&mut NodeRecord)>;

    #[test]
    fn refuses_fields_over_their_limits_on_both_sides() {
        let id = identity(13);
        let cases: Vec<(&str, Edit)> = vec![
            (
                "addrs",
                Box::new(|r| r.listen_addrs = vec!["/a".into(); MAX_LISTEN_ADDRS + 1]),
            ),
            (
                "addr",
                Box::new(|r| r.listen_addrs = vec!["a".repeat(MAX_ADDR_LEN + 1)]),
            ),
            (
                "version",
                Box::new(|r| r.version = "v".repeat(MAX_VERSION_LEN + 1)),
            ),
            (
                "load",
                Box::new(|r| r.capacity.load_permille = MAX_LOAD_PERMILLE + 1),
            ),
            (
                "vcpus",
                Box::new(|r| r.capacity.free_vcpus = r.capacity.vcpus + 1),
            ),
            (
                "memory",
                Box::new(|r| r.capacity.free_memory_bytes = r.capacity.memory_bytes + 1),
            ),
        ];
        for (name, change) in cases {
            let mut record = record_for(&id, 1);
            change(&mut record);
            let err = SignedRecord::sign(&id, &record).unwrap_err();
            assert!(
                matches!(
                    err,
                    RecordError::TooMany { .. }
                        | RecordError::FieldTooLong { .. }
                        | RecordError::OutOfRange { .. }
                ),
                "{name}: {err}"
            );
            let verified = SignedRecord::verify(&forged(&id, &record), Duration::from_secs(NOW));
            assert_eq!(verified.unwrap_err(), err, "{name}");
        }
    }

    #[test]
    fn refuses_a_peer_id_that_does_not_parse() {
        let id = identity(14);
        let mut record = record_for(&id, 1);
        record.peer_id = vec![0xFF; 10];
        let err =
            SignedRecord::verify(&forged(&id, &record), Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::BadPeerId { .. }), "{err}");
        record.peer_id = vec![0x12; MAX_PEER_ID_LEN + 1];
        let err =
            SignedRecord::verify(&forged(&id, &record), Duration::from_secs(NOW)).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::FieldTooLong {
                    field: "peer_id",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn book_keeps_the_newest_record_per_peer() {
        let (a, b) = (identity(20), identity(21));
        let mut book = RecordBook::new(10);
        assert_eq!(
            book.insert(record_for(&a, 5), Duration::from_secs(NOW))
                .unwrap(),
            None
        );
        assert_eq!(
            book.insert(record_for(&b, 1), Duration::from_secs(NOW))
                .unwrap(),
            None
        );
        let replaced = book
            .insert(record_for(&a, 6), Duration::from_secs(NOW))
            .unwrap();
        assert_eq!(replaced.map(|r| r.seq), Some(5));
        assert_eq!(book.get(&a.peer_id()).map(|r| r.seq), Some(6));
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn book_refuses_equal_and_older_sequence_numbers() {
        let a = identity(22);
        let mut book = RecordBook::new(10);
        book.insert(record_for(&a, 5), Duration::from_secs(NOW))
            .unwrap();
        for seq in [5, 4, 0] {
            let err = book
                .insert(record_for(&a, seq), Duration::from_secs(NOW))
                .unwrap_err();
            assert!(
                matches!(err, RecordError::Stale { have: 5, got, .. } if got == seq),
                "{err}"
            );
        }
        assert_eq!(book.get(&a.peer_id()).map(|r| r.seq), Some(5));
    }

    #[test]
    fn book_refuses_expired_records_and_prunes_them() {
        let (a, b) = (identity(23), identity(24));
        let mut book = RecordBook::new(10);
        let mut short = record_for(&a, 1);
        short.expires_at = NOW + 10;
        book.insert(short.clone(), Duration::from_secs(NOW))
            .unwrap();
        book.insert(record_for(&b, 1), Duration::from_secs(NOW))
            .unwrap();
        assert_eq!(book.prune(Duration::from_secs(NOW + 9)), 0);
        assert_eq!(book.prune(Duration::from_secs(NOW + 10)), 1);
        assert!(book.get(&a.peer_id()).is_none());
        assert!(book.get(&b.peer_id()).is_some());
        let err = book
            .insert(short, Duration::from_secs(NOW + 10))
            .unwrap_err();
        assert!(matches!(err, RecordError::Expired { .. }), "{err}");
    }

    #[test]
    fn book_refuses_new_peers_when_full_but_takes_updates() {
        let mut book = RecordBook::new(2);
        book.insert(record_for(&identity(30), 1), Duration::from_secs(NOW))
            .unwrap();
        book.insert(record_for(&identity(31), 1), Duration::from_secs(NOW))
            .unwrap();
        let err = book
            .insert(record_for(&identity(32), 1), Duration::from_secs(NOW))
            .unwrap_err();
        assert_eq!(err, RecordError::BookFull { limit: 2 });
        book.insert(record_for(&identity(31), 2), Duration::from_secs(NOW))
            .unwrap();
        assert!(book.remove(&identity(30).peer_id()).is_some());
        book.insert(record_for(&identity(32), 1), Duration::from_secs(NOW))
            .unwrap();
        let peers: Vec<_> = book.iter().map(|(p, _)| *p).collect();
        assert_eq!(peers.len(), 2);
        assert!(peers.windows(2).all(|w| w[0] < w[1]), "iterates in order");
    }
}
