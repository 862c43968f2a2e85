//! Why the owner's politeness policy is refused.

/// Why a policy is refused: the key (its path in the node's YAML) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct PolicyError {
    pub key: &'static str,
    pub reason: String,
}
