//! The first exchange on a migration's control stream: the source's [`MigrationOffer`] and
//! the destination's [`Answer`], each one frame of a 4-byte little-endian length and that
//! many bytes of JSON, at most [`MAX_FRAME`]. Pure: bytes in, values out, every check here.
//!
//! What this cannot do: judge whether this node wants the VM (the daemon's `admit` does);
//! check that the offer's figures match the VM that will arrive (the destination VMM refuses
//! a VM larger than the offer said, since the launch is sized from the offer).

use serde::{Deserialize, Serialize};

use crate::api::types::{MigrationMode, VmSpec};

/// Largest offer or answer frame body.
pub const MAX_FRAME: usize = 64 << 10;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Longest refusal reason sent (longer ones are cut).
pub const MAX_REASON: usize = 1024;
/// Guest memory an offer may name: 1 MiB to 1 TiB (what the VMM can build).
pub const MIN_MEM_BYTES: u64 = 1 << 20;
pub const MAX_MEM_BYTES: u64 = novacron_vm::machine::layout::MAX_MEM_BYTES;
pub const MAX_VCPUS: u8 = novacron_vm::machine::layout::MAX_VCPUS;

/// What the source proposes to send.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrationOffer {
    /// The migration session (also the id the destination VMM expects in the hello).
    pub session: [u8; 16],
    /// The VM's id on the source: 1-32 of [A-Za-z0-9_-].
    pub vm_id: String,
    pub spec: VmSpec,
    pub mode: MigrationMode,
    /// Guest memory of the running VM.
    pub mem_bytes: u64,
    pub vcpus: u8,
}

/// The destination's answer to an offer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Accept,
    Refuse { reason: String },
}

/// Why bytes are not a valid frame, offer or answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("frame of {len} bytes is over the limit of {MAX_FRAME} bytes")]
    TooLarge { len: usize },
    #[error("frame is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("vm_id {0:?}: give 1 to 32 of A-Z, a-z, 0-9, '_' and '-'")]
    VmId(String),
    #[error("mem_bytes {0}: give {MIN_MEM_BYTES} to {MAX_MEM_BYTES}, a multiple of 4096")]
    Memory(u64),
    #[error("vcpus {0}: give 1 to {MAX_VCPUS}")]
    Vcpus(u8),
    #[error(
        "the offer's spec (mem_mib {spec_mib}, vcpus {spec_vcpus}) disagrees with its \
         mem_bytes {mem_bytes} and vcpus {vcpus}: the destination admits by them"
    )]
    SpecMismatch {
        spec_mib: u64,
        spec_vcpus: u8,
        mem_bytes: u64,
        vcpus: u8,
    },
}

/// True for 1-32 of [A-Za-z0-9_-] (what the VMM's cgroup naming accepts).
pub fn valid_vm_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl MigrationOffer {
    /// Checks what the destination relies on before launching anything.
    pub fn validate(&self) -> Result<(), OfferError> {
        if !valid_vm_id(&self.vm_id) {
            return Err(OfferError::VmId(self.vm_id.clone()));
        }
        if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&self.mem_bytes)
            || !self.mem_bytes.is_multiple_of(4096)
        {
            return Err(OfferError::Memory(self.mem_bytes));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(OfferError::Vcpus(self.vcpus));
        }
        if self.spec.mem_mib.checked_mul(1 << 20) != Some(self.mem_bytes)
            || self.spec.vcpus != self.vcpus
        {
            return Err(OfferError::SpecMismatch {
                spec_mib: self.spec.mem_mib,
                spec_vcpus: self.spec.vcpus,
                mem_bytes: self.mem_bytes,
                vcpus: self.vcpus,
            });
        }
        Ok(())
    }

    /// The offer as one frame (length prefix included), after [`validate`](Self::validate).
    pub fn encode(&self) -> Result<Vec<u8>, OfferError> {
        self.validate()?;
        encode_json(self)
    }

    /// An offer from a frame body (without its length prefix), validated.
    pub fn decode(body: &[u8]) -> Result<Self, OfferError> {
        let offer: Self = decode_json(body)?;
        offer.validate()?;
        Ok(offer)
    }
}

/// A source's question on a new control stream, after it lost a migration's streams once
/// its VM's state had left: whether the destination started that session's VM. Accepted,
/// the stream carries the links preamble and the VMMs' `Query` / `Status` exchange.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The session in doubt.
    pub resolve: [u8; 16],
}

impl ResolveRequest {
    pub fn encode(&self) -> Result<Vec<u8>, OfferError> {
        encode_json(self)
    }

    pub fn decode(body: &[u8]) -> Result<Self, OfferError> {
        decode_json(body)
    }
}

impl Answer {
    /// A refusal, its reason cut to [`MAX_REASON`] bytes (at a character boundary).
    pub fn refuse(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Answer::Refuse { reason }
    }

    pub fn encode(&self) -> Result<Vec<u8>, OfferError> {
        encode_json(self)
    }

    pub fn decode(body: &[u8]) -> Result<Self, OfferError> {
        decode_json(body)
    }
}

/// The body length a prefix announces, if within the limit.
pub fn body_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, OfferError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(OfferError::TooLarge { len });
    }
    Ok(len)
}

fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, OfferError> {
    let body = serde_json::to_vec(value).map_err(|e| OfferError::Json(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(OfferError::TooLarge { len: body.len() });
    }
    let mut frame = Vec::with_capacity(LEN_PREFIX + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn decode_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, OfferError> {
    if body.len() > MAX_FRAME {
        return Err(OfferError::TooLarge { len: body.len() });
    }
    serde_json::from_slice(body).map_err(|e| OfferError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn offer() -> MigrationOffer {
        MigrationOffer {
            session: [7; 16],
            vm_id: "vm-1_a".into(),
            spec: serde_json::from_str(r#"{"guest":"builtin:counter"}"#).unwrap(),
            mode: MigrationMode::Live,
            mem_bytes: 64 << 20,
            vcpus: 1,
        }
    }

    fn body(frame: &[u8]) -> &[u8] {
        let len = body_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(frame.len(), 4 + len);
        &frame[4..]
    }

    #[test]
    fn offers_and_answers_round_trip() {
        let o = offer();
        assert_eq!(
            MigrationOffer::decode(body(&o.encode().unwrap())).unwrap(),
            o
        );
        for a in [Answer::Accept, Answer::refuse("full")] {
            assert_eq!(Answer::decode(body(&a.encode().unwrap())).unwrap(), a);
        }
    }

    #[test]
    fn bad_offers_name_the_field() {
        let mut o = offer();
        o.vm_id = "a/b".into();
        assert_eq!(o.encode(), Err(OfferError::VmId("a/b".into())));
        o.vm_id = "x".repeat(33);
        assert!(matches!(o.validate(), Err(OfferError::VmId(_))));
        let mut o = offer();
        o.mem_bytes = 0;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mem_bytes 0"));
        o.mem_bytes = (64 << 20) + 1;
        assert!(matches!(o.validate(), Err(OfferError::Memory(_))));
        o.mem_bytes = MAX_MEM_BYTES + 4096;
        assert!(matches!(o.validate(), Err(OfferError::Memory(_))));
        let mut o = offer();
        o.vcpus = 0;
        assert!(o.validate().unwrap_err().to_string().contains("vcpus 0"));
        // The spec (what the destination records) and the figures (what it admits by and
        // sizes the VMM from) must be the same VM.
        let mut o = offer();
        o.spec.mem_mib = 4;
        assert!(matches!(o.validate(), Err(OfferError::SpecMismatch { .. })));
        let mut o = offer();
        o.spec.vcpus = 2;
        assert!(matches!(o.validate(), Err(OfferError::SpecMismatch { .. })));
        let mut o = offer();
        o.spec.mem_mib = u64::MAX;
        assert!(matches!(o.validate(), Err(OfferError::SpecMismatch { .. })));
        let json = serde_json::to_vec(&offer()).unwrap();
        let mut extra: serde_json::Value = serde_json::from_slice(&json).unwrap();
        extra["surprise"] = 1.into();
        let err = MigrationOffer::decode(extra.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn oversized_frames_are_refused_from_the_prefix() {
        let err = body_len(((MAX_FRAME + 1) as u32).to_le_bytes()).unwrap_err();
        assert_eq!(err, OfferError::TooLarge { len: MAX_FRAME + 1 });
        assert!(err.to_string().contains("65536"), "{err}");
        assert_eq!(body_len((MAX_FRAME as u32).to_le_bytes()), Ok(MAX_FRAME));
        let mut o = offer();
        o.spec.cmdline = Some("x".repeat(MAX_FRAME));
        assert!(matches!(o.encode(), Err(OfferError::TooLarge { .. })));
    }

    #[test]
    fn long_reasons_are_cut_at_a_character() {
        let Answer::Refuse { reason } = Answer::refuse("é".repeat(MAX_REASON)) else {
            panic!("not a refusal");
        };
        assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = MigrationOffer::decode(&bytes);
            let _ = Answer::decode(&bytes);
            if bytes.len() >= 4 {
                let _ = body_len([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }

        #[test]
        fn mangled_offers_never_panic(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
            let frame = offer().encode().unwrap();
            let mut b = frame[4..].to_vec();
            if flip < b.len() {
                b[flip] ^= 1 << bit;
            }
            b.truncate(cut.min(b.len()));
            if let Ok(o) = MigrationOffer::decode(&b) {
                prop_assert!(o.validate().is_ok());
            }
        }
    }
}
