//! A submitter's signing key on disk: the key `novacron keys new` makes and `novacron submit`
//! signs job submissions with.
//!
//! The file has the node key's format (see [`crate::identity`]) with the magic `NCSUBMK1`:
//! 72 bytes, mode 0600, written through a fsynced temporary file linked into place. Unlike a
//! node key, [`SubmitterKey::create`] never loads or replaces a key that is already there,
//! and [`SubmitterKey::load`] never creates one: a submitter key is made on purpose, once.
//!
//! What this cannot do: it does not create or check the directory the key lives in (the
//! caller makes it 0700), does not check the file's owner, and cannot protect the key from
//! root or from a copy taken while it was readable by others.

use std::path::Path;

use crate::identity::{load_key_file, write_key_file, IdentityError, KeyKind, NodeIdentity};
use crate::submission::SubmitterId;

/// A submitter's ed25519 key. It signs through [`SubmitterKey::identity`], which is what
/// [`crate::submission::Submission::sign`] takes.
#[derive(Clone, Debug)]
pub struct SubmitterKey {
    identity: NodeIdentity,
}

impl SubmitterKey {
    /// Makes a new key and writes it to `path` (its directory must exist). Refuses, with
    /// [`IdentityError::Exists`], when `path` exists, whatever it holds.
    pub fn create(path: &Path) -> Result<SubmitterKey, IdentityError> {
        let identity = NodeIdentity::generate()?;
        write_key_file(KeyKind::Submitter, path, &identity)?;
        tracing::info!(path = %path.display(), submitter = %SubmitterId::of(&identity.public()),
            "created submitter key");
        Ok(SubmitterKey { identity })
    }

    /// Reads the key at `path`: refuses a file readable by others than its owner, of the
    /// wrong size, without the submitter magic (a node key is named as one), or whose
    /// public key does not match its secret.
    pub fn load(path: &Path) -> Result<SubmitterKey, IdentityError> {
        load_key_file(KeyKind::Submitter, path).map(|identity| SubmitterKey { identity })
    }

    /// A key from a 32-byte secret seed, kept nowhere (tests and seed generators).
    pub fn from_seed(seed: &[u8; 32]) -> Result<SubmitterKey, IdentityError> {
        NodeIdentity::from_seed(seed).map(|identity| SubmitterKey { identity })
    }

    /// The key's public half, as nodes name the submitter.
    pub fn public(&self) -> SubmitterId {
        SubmitterId::of(&self.identity.public())
    }

    /// The keypair, for [`crate::submission::Submission::sign`].
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Signs `msg` (plain ed25519; callers prepend their own domain string).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.identity.sign(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::submission::{verify, Submission};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn a_created_key_is_private_reloads_and_signs_submissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        let key = SubmitterKey::create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(&fs::read(&path).unwrap()[..8], b"NCSUBMK1");
        let again = SubmitterKey::load(&path).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");

        let now = Duration::from_secs(1_800_000_000);
        let bytes = Submission::new(b"{}".to_vec(), [1; 16], now, Duration::from_secs(60))
            .sign(again.identity())
            .unwrap();
        assert_eq!(verify(&bytes, now).unwrap().submitter, key.public());
    }

    #[test]
    fn create_refuses_to_replace_any_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let first = SubmitterKey::create(&path).unwrap();
        let before = fs::read(&path).unwrap();
        let err = SubmitterKey::create(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        assert!(err.to_string().starts_with("submitter key "), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(SubmitterKey::load(&path).unwrap().public(), first.public());
        let other = dir.path().join("notes.txt");
        fs::write(&other, "hello").unwrap();
        assert!(matches!(
            SubmitterKey::create(&other),
            Err(IdentityError::Exists { .. })
        ));
        assert_eq!(fs::read(&other).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temp left");
    }

    #[test]
    fn create_in_a_missing_directory_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("k.key");
        let err = SubmitterKey::create(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    /// A key file at `dir/k.key` holding `bytes`, mode 0600.
    fn file(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join("k.key");
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn good_bytes() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        SubmitterKey::create(&path).unwrap();
        fs::read(&path).unwrap()
    }

    #[test]
    fn load_refuses_each_fault_and_names_the_submitter_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SubmitterKey::load(&dir.path().join("absent.key")).unwrap_err();
        assert!(matches!(missing, IdentityError::Io { .. }), "{missing}");

        let path = file(dir.path(), &good_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SubmitterKey::load(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::LoosePermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("submitter key {}", path.display())),
            "{err}"
        );

        let good = good_bytes();
        let path = file(dir.path(), &good[..71]);
        let err = SubmitterKey::load(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::WrongSize { len: 71, .. }),
            "{err}"
        );

        let mut foreign = good.clone();
        foreign[..8].copy_from_slice(b"SSHKEY01");
        let path = file(dir.path(), &foreign);
        let err = SubmitterKey::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::NotAKey { .. }), "{err}");
        assert!(err.to_string().contains("NCSUBMK1"), "{err}");

        let mut damaged = good.clone();
        damaged[71] ^= 1;
        let path = file(dir.path(), &damaged);
        let err = SubmitterKey::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Damaged { .. }), "{err}");

        let sub = dir.path().join("adir.key");
        fs::create_dir(&sub).unwrap();
        let err = SubmitterKey::load(&sub).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::NotAFile { .. } | IdentityError::Io { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn node_and_submitter_keys_are_not_taken_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        NodeIdentity::load_or_create(&data).unwrap();
        let node_key = data.join(crate::identity::KEY_FILE_NAME);
        let err = SubmitterKey::load(&node_key).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::WrongKind {
                    kind: KeyKind::Submitter,
                    found: KeyKind::Node,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("is a NovaCron node key"), "{err}");

        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        let sub = SubmitterKey::create(&other.join(crate::identity::KEY_FILE_NAME)).unwrap();
        let err = NodeIdentity::load_or_create(&other).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::WrongKind {
                    kind: KeyKind::Node,
                    found: KeyKind::Submitter,
                    ..
                }
            ),
            "{err}"
        );
        let still = SubmitterKey::load(&other.join(crate::identity::KEY_FILE_NAME)).unwrap();
        assert_eq!(still.public(), sub.public(), "never replaced");
    }

    #[test]
    fn debug_output_does_not_show_the_secret() {
        let key = SubmitterKey::from_seed(&[7; 32]).unwrap();
        assert!(!format!("{key:?}").contains("7, 7, 7"));
        assert_eq!(
            key.sign(b"x"),
            NodeIdentity::from_seed(&[7; 32]).unwrap().sign(b"x")
        );
    }
}
