//! Which submitters this node accepts jobs from: the config's `trustedSubmitters` together
//! with the trust file `<data_dir>/trusted-submitters`, which `novacron keys trust|untrust`
//! edit while the node runs.
//!
//! The trust file is text: one `ed25519:<64 hex digits>` a line; `#` starts a comment; blank
//! lines are skipped. [`TrustedSubmitters::current`] stats it on every call and reads it again
//! only when its identity (device, inode), size, mtime or ctime changed, so a running node
//! sees an edit on the next submission without a restart, at the cost of one `stat`. The file
//! is written whole to a temporary file, fsynced, renamed over the old one (mode 0644), and the
//! directory fsynced: a reader sees the old file or the new one, never half of one.
//!
//! A damaged line is an error naming the file and the line, never echoing the line (which may
//! hold anything pasted there). While the file is damaged, `current` fails (the node trusts
//! no one rather than guess), and the editing functions refuse to touch it.
//!
//! What this cannot do: serialise two editors (two `novacron keys trust` at the same instant:
//! the last rename wins, and one edit is lost); notice an edit that keeps size, mtime, ctime
//! and inode all the same (only a tool setting the times back could make one); revoke a
//! config key (the config file is the operator's; edit it and restart).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use novacron_mesh::submission::SubmitterId;
use novacron_mesh::util::lock;

/// Name of the trust file inside the data directory.
pub const TRUST_FILE_NAME: &str = "trusted-submitters";

/// Largest trust file read (about 10,000 keys with comments).
pub const MAX_TRUST_FILE_BYTES: u64 = 1 << 20;

/// Why the trust file could not be read or changed; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust file {path}: cannot {op} it: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("trust file {path}: {len} bytes is over the {MAX_TRUST_FILE_BYTES}-byte limit")]
    TooLarge { path: PathBuf, len: u64 },
    #[error(
        "trust file {path} line {line}: {reason}; each line is one submitter key \
         (ed25519:<64 hex digits>), # starts a comment: fix or remove that line"
    )]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TrustError + 'a {
    move |source| TrustError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The trust file of a data directory.
pub fn trust_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TRUST_FILE_NAME)
}

/// The key a line names, if any: `Err((reason))` for a damaged line.
fn line_key(line: &str) -> Result<Option<SubmitterId>, String> {
    let text = line.split('#').next().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.contains(char::is_whitespace) {
        return Err("more than one word before the comment".into());
    }
    SubmitterId::parse(text).map(Some)
}

/// The keys in trust-file text; a damaged line is `(line number, reason)`.
pub fn parse_trust_text(text: &str) -> Result<BTreeSet<SubmitterId>, (usize, String)> {
    let mut keys = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(key) = line_key(line).map_err(|reason| (i + 1, reason))? {
            keys.insert(key);
        }
    }
    Ok(keys)
}

/// What identifies one version of the file: it changes whenever the file is replaced or
/// written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Reads the trust file's text (none when it does not exist) and its stamp, checking the
/// size on the open file first.
fn read_text(path: &Path) -> Result<Option<(String, Stamp)>, TrustError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if meta.len() > MAX_TRUST_FILE_BYTES {
        return Err(TrustError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_TRUST_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        TrustError::BadLine {
            path: path.to_path_buf(),
            line,
            reason: "not UTF-8 text".into(),
        }
    })?;
    Ok(Some((text, Stamp::of(&meta))))
}

/// Reads and checks the trust file at `path`; a missing file holds no keys.
pub fn read_trust_file(path: &Path) -> Result<BTreeSet<SubmitterId>, TrustError> {
    Ok(read_checked(path)?
        .map(|(_, keys, _)| keys)
        .unwrap_or_default())
}

fn read_checked(path: &Path) -> Result<Option<(String, BTreeSet<SubmitterId>, Stamp)>, TrustError> {
    let Some((text, stamp)) = read_text(path)? else {
        return Ok(None);
    };
    let keys = parse_trust_text(&text).map_err(|(line, reason)| TrustError::BadLine {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    Ok(Some((text, keys, stamp)))
}

/// Adds `key` to the trust file at `path` (created if missing), as a line followed by
/// `# note` when a note is given. Returns false, and leaves the file alone, when the file
/// already names the key. Refuses a damaged file.
pub fn trust_key(path: &Path, key: &SubmitterId, note: Option<&str>) -> Result<bool, TrustError> {
    let (mut text, keys) = match read_checked(path)? {
        Some((text, keys, _)) => (text, keys),
        None => (
            "# Submitters this node accepts jobs from, one ed25519 key a line (edited by \
             `novacron keys trust|untrust`).\n"
                .to_string(),
            BTreeSet::new(),
        ),
    };
    if keys.contains(key) {
        return Ok(false);
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&key.to_string());
    if let Some(note) = note.map(|n| n.replace(['\n', '\r'], " ")) {
        text.push_str(&format!("  # {note}"));
    }
    text.push('\n');
    write_replacing(path, text.as_bytes())?;
    Ok(true)
}

/// Removes every line naming `key` from the trust file at `path`, keeping the other lines
/// and comments. Returns false, and leaves the file alone, when the file does not name it.
/// Refuses a damaged file.
pub fn untrust_key(path: &Path, key: &SubmitterId) -> Result<bool, TrustError> {
    let Some((text, keys, _)) = read_checked(path)? else {
        return Ok(false);
    };
    if !keys.contains(key) {
        return Ok(false);
    }
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if line_key(line).ok().flatten().as_ref() != Some(key) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_replacing(path, kept.as_bytes())?;
    Ok(true)
}

/// Writes `bytes` to a temporary file next to `path` (mode 0644), fsyncs it, renames it over
/// `path` and fsyncs the directory.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{TRUST_FILE_NAME}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write a new version of", path)(e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("replace", path)(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory of", path))
}

/// The submitters a node trusts: its configured keys and its trust file's, the file read
/// again only when it changed (see the module doc).
#[derive(Debug)]
pub struct TrustedSubmitters {
    configured: BTreeSet<SubmitterId>,
    path: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// The stamp of the file version `from_file` holds (None: the file did not exist).
    stamp: Option<Stamp>,
    from_file: BTreeSet<SubmitterId>,
    loaded: bool,
}

impl TrustedSubmitters {
    /// The configured keys together with the trust file at `trust_file` (which need not
    /// exist: see [`trust_file_path`]).
    pub fn new(
        configured: impl IntoIterator<Item = SubmitterId>,
        trust_file: PathBuf,
    ) -> TrustedSubmitters {
        TrustedSubmitters {
            configured: configured.into_iter().collect(),
            path: trust_file,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The trust file this reads.
    pub fn trust_file(&self) -> &Path {
        &self.path
    }

    /// The trusted keys now: the configured ones and the trust file's. Fails while the
    /// trust file cannot be read or holds a damaged line.
    pub fn current(&self) -> Result<BTreeSet<SubmitterId>, TrustError> {
        let stamp = match fs::metadata(&self.path) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("stat", &self.path)(e)),
        };
        let mut cache = lock(&self.cache);
        if !cache.loaded || cache.stamp != stamp {
            // The stamp kept is the one of what was read (the file may change in between).
            let (keys, read_stamp) = match read_checked(&self.path)? {
                Some((_, keys, stamp)) => (keys, Some(stamp)),
                None => (BTreeSet::new(), None),
            };
            *cache = Cache {
                stamp: read_stamp,
                from_file: keys,
                loaded: true,
            };
        }
        Ok(self.configured.union(&cache.from_file).copied().collect())
    }

    /// Whether `submitter` is trusted now (see [`TrustedSubmitters::current`]).
    pub fn is_trusted(&self, submitter: &SubmitterId) -> Result<bool, TrustError> {
        Ok(self.current()?.contains(submitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(n: u8) -> SubmitterId {
        let key = novacron_mesh::identity::NodeIdentity::from_seed(&[n; 32]).unwrap();
        SubmitterId::of(&key.public())
    }

    #[test]
    fn config_and_file_keys_are_united_and_edits_are_seen_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = trust_file_path(dir.path());
        let trusted = TrustedSubmitters::new([id(1)], path.clone());
        assert_eq!(trusted.current().unwrap(), BTreeSet::from([id(1)]));

        assert!(trust_key(&path, &id(2), Some("alice")).unwrap());
        assert!(!trust_key(&path, &id(2), None).unwrap(), "already there");
        assert_eq!(trusted.current().unwrap(), BTreeSet::from([id(1), id(2)]));
        assert!(trusted.is_trusted(&id(2)).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("{}  # alice\n", id(2))), "{text}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );

        assert!(trust_key(&path, &id(3), None).unwrap());
        assert!(untrust_key(&path, &id(2)).unwrap());
        assert!(!untrust_key(&path, &id(2)).unwrap());
        assert_eq!(trusted.current().unwrap(), BTreeSet::from([id(1), id(3)]));
        assert!(
            !untrust_key(&path, &id(1)).unwrap(),
            "config keys are not in the file"
        );
        assert!(trusted.is_trusted(&id(1)).unwrap());

        fs::remove_file(&path).unwrap();
        assert_eq!(trusted.current().unwrap(), BTreeSet::from([id(1)]));
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary files left");
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = trust_file_path(dir.path());
        fs::write(&path, format!("{}\n", id(1))).unwrap();
        let trusted = TrustedSubmitters::new([], path.clone());
        assert!(trusted.is_trusted(&id(1)).unwrap());
        // What the cache holds is answered while the file keeps its stamp.
        lock(&trusted.cache).from_file = BTreeSet::from([id(9)]);
        assert!(trusted.is_trusted(&id(9)).unwrap(), "the cache answered");
        // Any write changes the stamp and the file is read again.
        fs::write(&path, format!("{}\n", id(2))).unwrap();
        assert_eq!(trusted.current().unwrap(), BTreeSet::from([id(2)]));
    }

    #[test]
    fn comments_and_blank_lines_are_skipped_and_a_damaged_line_is_named_not_echoed() {
        let text = format!("# team\n\n  {}   # bob\n{}\n", id(1), id(2));
        assert_eq!(
            parse_trust_text(&text).unwrap(),
            BTreeSet::from([id(1), id(2)])
        );

        let dir = tempfile::tempdir().unwrap();
        let path = trust_file_path(dir.path());
        let secret = "s3cr3t-pasted-by-mistake";
        fs::write(&path, format!("{}\n# ok\n{secret}\n", id(1))).unwrap();
        let trusted = TrustedSubmitters::new([id(5)], path.clone());
        let err = trusted.current().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TrustError::BadLine { line: 3, .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(!msg.contains(secret), "{msg}");
        assert!(
            trust_key(&path, &id(3), None).is_err(),
            "a damaged file is not edited"
        );
        assert!(untrust_key(&path, &id(1)).is_err());

        fs::write(&path, format!("{} {}\n", id(1), id(2))).unwrap();
        assert!(matches!(
            trusted.current(),
            Err(TrustError::BadLine { line: 1, .. })
        ));
        fs::write(&path, b"\xff\xfe\n").unwrap();
        assert!(matches!(
            trusted.current(),
            Err(TrustError::BadLine { line: 1, .. })
        ));
        fs::write(&path, vec![b'#'; MAX_TRUST_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            trusted.current(),
            Err(TrustError::TooLarge { .. })
        ));
        fs::write(&path, "").unwrap();
        assert_eq!(trusted.current().unwrap(), BTreeSet::from([id(5)]));
    }

    #[test]
    fn untrust_keeps_other_lines_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = trust_file_path(dir.path());
        fs::write(
            &path,
            format!("# mine\n{}  # a\n\n{}\n{}  # again\n", id(1), id(2), id(1)),
        )
        .unwrap();
        assert!(untrust_key(&path, &id(1)).unwrap());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("# mine\n\n{}\n", id(2))
        );
    }
}
