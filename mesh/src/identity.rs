//! A node's ed25519 identity: created on first start, kept in `<data_dir>/node.key`, and the
//! source of the node's libp2p [`PeerId`].
//!
//! The key file is 72 bytes: the magic `NCNODEK1`, the 32-byte ed25519 secret seed and the
//! 32-byte public key (checked against the seed on load, so a damaged file is noticed rather
//! than becoming a different node). It is created with mode 0600 through a temporary file
//! that is fsynced and then linked into place (`link(2)` never replaces an existing file, so
//! two processes starting at once end up sharing one key), and the directory is fsynced.
//! A key file with looser permissions, the wrong size or foreign content is an error naming
//! the file; it is never replaced.
//!
//! The same file format, with the magic `NCSUBMK1`, holds a submitter's key (see
//! [`crate::submitter_key`]); [`KeyKind`] tells the two apart, and each error says which kind
//! of key it is about. A file of one kind is never loaded as the other.
//!
//! What this cannot do: it does not check the file's owner (a key owned by another user but
//! readable by us is used), does not lock the data directory against a second daemon, and
//! cannot protect the key from root or from a copy taken while it was world-readable.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use zeroize::Zeroizing;

/// Name of the key file inside the data directory.
pub const KEY_FILE_NAME: &str = "node.key";

/// First bytes of every node key file.
pub const KEY_FILE_MAGIC: &[u8; 8] = b"NCNODEK1";

/// First bytes of every submitter key file.
pub const SUBMITTER_KEY_MAGIC: &[u8; 8] = b"NCSUBMK1";

/// Size of a key file: magic, secret seed, public key.
pub const KEY_FILE_LEN: usize = 8 + 32 + 32;

/// Permission bits a key file may have besides the owner's (none).
const FORBIDDEN_MODE_BITS: u32 = 0o077;

/// The kinds of key file: one format, told apart by the magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A node's identity (`<data_dir>/node.key`).
    Node,
    /// A submitter's signing key (`novacron keys new`).
    Submitter,
}

impl KeyKind {
    /// The first bytes of a key file of this kind.
    pub fn magic(self) -> &'static [u8; 8] {
        match self {
            KeyKind::Node => KEY_FILE_MAGIC,
            KeyKind::Submitter => SUBMITTER_KEY_MAGIC,
        }
    }

    /// The kind of key whose magic `bytes` start with.
    fn of_magic(bytes: &[u8]) -> Option<KeyKind> {
        [KeyKind::Node, KeyKind::Submitter]
            .into_iter()
            .find(|k| bytes.starts_with(k.magic()))
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Node => "node key",
            KeyKind::Submitter => "submitter key",
        })
    }
}

/// Why a key could not be loaded or created; each names the kind of key and the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{kind}: cannot {op} {path}: {source}")]
    Io {
        kind: KeyKind,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{kind} {path} has mode {mode:04o}; it must be readable by its owner only \
         (run `chmod 600 {path}` if no one else could have read it, else move it away \
         and make a new key)"
    )]
    LoosePermissions {
        kind: KeyKind,
        path: PathBuf,
        mode: u32,
    },
    #[error("{kind} {path} is not a regular file")]
    NotAFile { kind: KeyKind, path: PathBuf },
    #[error("{kind} {path} is {len} bytes, a key file is {expected}")]
    WrongSize {
        kind: KeyKind,
        path: PathBuf,
        len: u64,
        expected: usize,
    },
    #[error("{kind} {path} is not a NovaCron {kind} (it does not start with {magic:?})")]
    NotAKey {
        kind: KeyKind,
        path: PathBuf,
        magic: &'static str,
    },
    #[error("{path} is a NovaCron {found}, not a {kind}: give a {kind} file")]
    WrongKind {
        kind: KeyKind,
        found: KeyKind,
        path: PathBuf,
    },
    #[error("{kind} {path} is damaged: its public key does not match its secret key")]
    Damaged { kind: KeyKind, path: PathBuf },
    #[error(
        "{kind} {path} already exists and is never replaced: pick another name (or move it \
         away first if you mean to lose that key)"
    )]
    Exists { kind: KeyKind, path: PathBuf },
    #[error("cannot make a key: the operating system gave no random bytes: {0}")]
    Random(getrandom::Error),
    #[error("libp2p refused the ed25519 key: {0}")]
    Libp2p(String),
}

fn io_err<'a>(
    kind: KeyKind,
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        kind,
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A node's keypair and the [`PeerId`] derived from it.
#[derive(Clone)]
pub struct NodeIdentity {
    signing: SigningKey,
    peer_id: PeerId,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads `<data_dir>/node.key`, or creates it (and `data_dir`) when it does not exist.
    pub fn load_or_create(data_dir: &Path) -> Result<NodeIdentity, IdentityError> {
        let path = data_dir.join(KEY_FILE_NAME);
        match load_key_file(KeyKind::Node, &path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                create(data_dir, &path)
            }
            other => other,
        }
    }

    /// An identity from a 32-byte secret seed (tests and the simulator; keeps nothing on disk).
    pub fn from_seed(seed: &[u8; 32]) -> Result<NodeIdentity, IdentityError> {
        let signing = SigningKey::from_bytes(seed);
        let peer_id = peer_id_of(&signing)?;
        Ok(NodeIdentity { signing, peer_id })
    }

    /// A fresh identity from the operating system's randomness, kept nowhere.
    pub fn generate() -> Result<NodeIdentity, IdentityError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(IdentityError::Random)?;
        NodeIdentity::from_seed(&seed)
    }

    /// The libp2p peer id a Swarm built from [`NodeIdentity::to_libp2p_keypair`] has.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The ed25519 public key.
    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs `msg` (plain ed25519; callers prepend their own domain string).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The same key as a libp2p keypair, for building the Swarm.
    pub fn to_libp2p_keypair(&self) -> Result<libp2p_identity::Keypair, IdentityError> {
        let seed = Zeroizing::new(self.signing.to_bytes());
        libp2p_keypair(&seed)
    }
}

fn libp2p_keypair(seed: &[u8; 32]) -> Result<libp2p_identity::Keypair, IdentityError> {
    // `ed25519_from_bytes` zeroes what it is given: hand it a copy that is ours to wipe.
    let mut copy = Zeroizing::new(*seed);
    libp2p_identity::Keypair::ed25519_from_bytes(copy.as_mut())
        .map_err(|e| IdentityError::Libp2p(e.to_string()))
}

/// The libp2p peer id of an ed25519 public key (what [`NodeIdentity::peer_id`] returns).
pub fn peer_id_of_public(public: &VerifyingKey) -> Result<PeerId, IdentityError> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(public.as_bytes())
        .map_err(|e| IdentityError::Libp2p(e.to_string()))?;
    Ok(libp2p_identity::PublicKey::from(key).to_peer_id())
}

fn peer_id_of(signing: &SigningKey) -> Result<PeerId, IdentityError> {
    peer_id_of_public(&signing.verifying_key())
}

/// Reads and checks an existing key file of `kind`.
pub(crate) fn load_key_file(kind: KeyKind, path: &Path) -> Result<NodeIdentity, IdentityError> {
    let mut file = File::open(path).map_err(io_err(kind, "open", path))?;
    // Checked on the open file, so what is checked is what is read.
    let meta = file.metadata().map_err(io_err(kind, "stat", path))?;
    check_metadata(kind, path, &meta)?;
    let mut bytes = Zeroizing::new([0u8; KEY_FILE_LEN]);
    file.read_exact(bytes.as_mut())
        .map_err(io_err(kind, "read", path))?;
    parse_key_file(kind, path, &bytes)
}

fn check_metadata(kind: KeyKind, path: &Path, meta: &fs::Metadata) -> Result<(), IdentityError> {
    let path = path.to_path_buf();
    if !meta.is_file() {
        return Err(IdentityError::NotAFile { kind, path });
    }
    let mode = meta.mode() & 0o7777;
    if mode & FORBIDDEN_MODE_BITS != 0 {
        return Err(IdentityError::LoosePermissions { kind, path, mode });
    }
    if meta.len() != KEY_FILE_LEN as u64 {
        return Err(IdentityError::WrongSize {
            kind,
            path,
            len: meta.len(),
            expected: KEY_FILE_LEN,
        });
    }
    Ok(())
}

fn parse_key_file(
    kind: KeyKind,
    path: &Path,
    bytes: &[u8; KEY_FILE_LEN],
) -> Result<NodeIdentity, IdentityError> {
    let (magic, rest) = bytes.split_at(8);
    if magic != kind.magic() {
        let path = path.to_path_buf();
        return Err(match KeyKind::of_magic(magic) {
            Some(found) => IdentityError::WrongKind { kind, found, path },
            None => IdentityError::NotAKey {
                kind,
                path,
                magic: match kind {
                    KeyKind::Node => "NCNODEK1",
                    KeyKind::Submitter => "NCSUBMK1",
                },
            },
        });
    }
    let (seed, public) = rest.split_at(32);
    let mut seed_arr = Zeroizing::new([0u8; 32]);
    seed_arr.copy_from_slice(seed);
    let identity = NodeIdentity::from_seed(&seed_arr)?;
    if identity.public().as_bytes().as_slice() != public {
        return Err(IdentityError::Damaged {
            kind,
            path: path.to_path_buf(),
        });
    }
    Ok(identity)
}

fn key_file_bytes(kind: KeyKind, identity: &NodeIdentity) -> Zeroizing<[u8; KEY_FILE_LEN]> {
    let mut bytes = Zeroizing::new([0u8; KEY_FILE_LEN]);
    bytes[..8].copy_from_slice(kind.magic());
    bytes[8..40].copy_from_slice(&identity.signing.to_bytes());
    bytes[40..].copy_from_slice(identity.public().as_bytes());
    bytes
}

/// Puts `identity`'s key file of `kind` at `path`, whose directory must exist: written to a
/// temporary file (0600, fsynced) that is linked into place, then the directory is fsynced.
/// `link(2)` never replaces a file: when `path` exists, this returns
/// [`IdentityError::Exists`] and leaves it alone.
pub(crate) fn write_key_file(
    kind: KeyKind,
    path: &Path,
    identity: &NodeIdentity,
) -> Result<(), IdentityError> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => {
            return Err(io_err(kind, "create", path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file path",
            )))
        }
    };
    let tmp = dir.join(format!(
        "{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    write_private_file(kind, &tmp, key_file_bytes(kind, identity).as_slice())?;
    let linked = fs::hard_link(&tmp, path);
    fs::remove_file(&tmp).map_err(io_err(kind, "remove", &tmp))?;
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(IdentityError::Exists {
                kind,
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(kind, "link the new key into", path)(e)),
    }
    sync_dir(kind, dir)
}

/// Makes a new identity and puts its key file in place, or loads the one another process put
/// there first.
fn create(data_dir: &Path, path: &Path) -> Result<NodeIdentity, IdentityError> {
    let kind = KeyKind::Node;
    fs::create_dir_all(data_dir).map_err(io_err(kind, "create directory", data_dir))?;
    let identity = NodeIdentity::generate()?;
    match write_key_file(kind, path, &identity) {
        Ok(()) => {}
        Err(IdentityError::Exists { .. }) => return load_key_file(kind, path),
        Err(e) => return Err(e),
    }
    tracing::info!(peer_id = %identity.peer_id, path = %path.display(), "created node key");
    Ok(identity)
}

/// Writes `bytes` to a new file of mode 0600 and fsyncs it. A leftover file of that name
/// (from a crash) is removed first, so its permissions are not inherited.
fn write_private_file(kind: KeyKind, path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err(kind, "remove", path)(e))
        }
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(kind, "create", path))?;
    file.write_all(bytes).map_err(io_err(kind, "write", path))?;
    file.sync_all().map_err(io_err(kind, "fsync", path))
}

fn sync_dir(kind: KeyKind, dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(kind, "fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_path(dir: &Path) -> PathBuf {
        dir.join(KEY_FILE_NAME)
    }

    #[test]
    fn creates_a_private_key_file_and_reloads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = NodeIdentity::load_or_create(&data).unwrap();
        let meta = fs::metadata(key_path(&data)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_FILE_LEN as u64);
        let again = NodeIdentity::load_or_create(&data).unwrap();
        assert_eq!(first.peer_id(), again.peer_id());
        assert_eq!(first.public(), again.public());
        let leftovers: Vec<_> = fs::read_dir(&data).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "the temporary file is gone");
    }

    #[test]
    fn two_data_dirs_get_different_identities() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ia = NodeIdentity::load_or_create(a.path()).unwrap();
        let ib = NodeIdentity::load_or_create(b.path()).unwrap();
        assert_ne!(ia.peer_id(), ib.peer_id());
    }

    #[test]
    fn peer_id_is_the_one_libp2p_derives_from_the_same_key() {
        let identity = NodeIdentity::from_seed(&[42; 32]).unwrap();
        let keypair = identity.to_libp2p_keypair().unwrap();
        assert_eq!(keypair.public().to_peer_id(), identity.peer_id());
        let msg = b"same key, same signature";
        assert_eq!(
            keypair.sign(msg).unwrap(),
            identity.sign(msg).to_vec(),
            "ed25519 is deterministic: both APIs hold one key"
        );
        assert_eq!(
            peer_id_of_public(&identity.public()).unwrap(),
            identity.peer_id()
        );
    }

    #[test]
    fn signatures_verify_under_the_public_key_only() {
        let identity = NodeIdentity::from_seed(&[1; 32]).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&identity.sign(b"hello"));
        assert!(identity.public().verify_strict(b"hello", &sig).is_ok());
        assert!(identity.public().verify_strict(b"hellO", &sig).is_err());
    }

    #[test]
    fn refuses_a_world_readable_key_file_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        NodeIdentity::load_or_create(dir.path()).unwrap();
        let path = key_path(dir.path());
        let before = fs::read(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::LoosePermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("node key {}", path.display())),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), before, "never replaced");
    }

    #[test]
    fn refuses_a_group_readable_key_file() {
        let dir = tempfile::tempdir().unwrap();
        NodeIdentity::load_or_create(dir.path()).unwrap();
        let path = key_path(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::LoosePermissions { .. }),
            "{err}"
        );
    }

    fn write_key(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = key_path(dir);
        write_private_file(KeyKind::Node, &path, bytes).unwrap();
        path
    }

    #[test]
    fn refuses_a_truncated_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::from_seed(&[3; 32]).unwrap();
        let full = key_file_bytes(KeyKind::Node, &id);
        let path = write_key(dir.path(), &full[..40]);
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::WrongSize { len: 40, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap().len(), 40, "never replaced");
    }

    #[test]
    fn refuses_an_empty_key_file() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), b"");
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::WrongSize { len: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_file_that_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = [b'#'; KEY_FILE_LEN];
        write_key(dir.path(), &text);
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::NotAKey { .. }), "{err}");
    }

    #[test]
    fn refuses_a_key_whose_public_half_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::from_seed(&[5; 32]).unwrap();
        let mut bytes = key_file_bytes(KeyKind::Node, &id);
        bytes[KEY_FILE_LEN - 1] ^= 1;
        write_key(dir.path(), bytes.as_slice());
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Damaged { .. }), "{err}");
    }

    #[test]
    fn refuses_a_directory_in_place_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(key_path(dir.path())).unwrap();
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::NotAFile { .. } | IdentityError::Io { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_key_written_by_another_process_first_is_loaded_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = NodeIdentity::from_seed(&[9; 32]).unwrap();
        write_key(
            dir.path(),
            key_file_bytes(KeyKind::Node, &theirs).as_slice(),
        );
        // `create` finds the file already there when it links its own into place.
        let got = create(dir.path(), &key_path(dir.path())).unwrap();
        assert_eq!(got.peer_id(), theirs.peer_id());
    }

    #[test]
    fn debug_output_does_not_show_the_secret() {
        let id = NodeIdentity::from_seed(&[7; 32]).unwrap();
        let shown = format!("{id:?}");
        assert!(shown.contains(&id.peer_id().to_string()));
        assert!(!shown.contains("7, 7, 7"));
    }
}
