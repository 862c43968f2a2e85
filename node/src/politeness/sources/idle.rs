//! How long the owner has been away from the keyboard: the newest access time among the
//! input event devices (`/dev/input/event*`), the virtual consoles (`/dev/ttyN`) and the
//! pseudo-terminals (`/dev/pts/N`, SSH and terminal emulators), as BOINC's Linux client
//! does for terminals.
//!
//! What it cannot see: a device whose access time the kernel does not update on read
//! (mounts with `noatime`; some drivers), a graphical session whose compositor holds input
//! devices it reads without touching their timestamps, and input the daemon may not stat.
//! Such a desktop looks idle; the owner-activity hook (`<dataDir>/owner-active`, or the API)
//! is the way to say otherwise. A host with none of these files gets `None`: the policy then
//! judges the owner by CPU load.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Most directory entries looked at per directory (a `/dev` has a few hundred).
const MAX_ENTRIES: usize = 4096;

/// How long the list of virtual consoles is kept before `/dev` is listed again. Consoles are
/// made at boot; listing all of `/dev` every second was most of what an idle daemon's
/// politeness sampling cost. Input devices and pseudo-terminals (small directories, and a new
/// SSH login makes a new terminal) are listed on every sample.
pub const CONSOLES_RELISTED_EVERY: Duration = Duration::from_secs(60);

/// The kernel's name of the foreground virtual console (`tty1`...), under `/sys`.
const ACTIVE_CONSOLE: &str = "class/tty/tty0/active";

/// Consoles statted on every sample when the foreground one is known: it and the one before
/// it (a console switch is typed on the console switched from).
const WATCHED_CONSOLES: usize = 2;

/// Owner idle time with the list of virtual consoles kept between samples.
///
/// Only the foreground console takes keyboard input, so when `/sys` names it, a sample stats
/// it and the console in the foreground before it; all consoles (63 on most systems) are
/// statted when they are listed again. Without `/sys`, every listed console is statted on
/// every sample.
#[derive(Debug, Default)]
pub struct OwnerIdle {
    consoles: Vec<PathBuf>,
    listed_at: Option<SystemTime>,
    /// The newest access among all consoles when they were last listed.
    consoles_newest: Option<SystemTime>,
    /// The foreground console and the one before it, newest first.
    watched: Vec<PathBuf>,
}

impl OwnerIdle {
    /// Time since the newest access of an input device or terminal under `dev` (normally
    /// `/dev`; the foreground console is read under `sys`, normally `/sys`), as of `now`;
    /// None when there are none. An access time in the future counts as now.
    pub fn sample(&mut self, dev: &Path, sys: &Path, now: SystemTime) -> Option<Duration> {
        let fresh = self.listed_at.is_some_and(|at| {
            now.duration_since(at)
                .is_ok_and(|age| age < CONSOLES_RELISTED_EVERY)
        });
        if !fresh {
            self.consoles = list(dev, is_console_tty);
            self.consoles_newest = newest_of(&self.consoles);
            self.listed_at = Some(now);
        }
        let consoles = match active_console(sys) {
            Some(name) => {
                let path = dev.join(name);
                if self.watched.first() != Some(&path) {
                    self.watched.retain(|p| p != &path);
                    self.watched.insert(0, path);
                    self.watched.truncate(WATCHED_CONSOLES);
                }
                newest_of(&self.watched).max(self.consoles_newest)
            }
            None => newest_of(&self.consoles),
        };
        let newest = [
            newest_atime(&dev.join("input"), |n| n.starts_with("event")),
            consoles,
            newest_atime(&dev.join("pts"), |n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            }),
        ]
        .into_iter()
        .flatten()
        .max()?;
        Some(now.duration_since(newest).unwrap_or(Duration::ZERO))
    }
}

/// The foreground virtual console's name, if `/sys` gives one.
fn active_console(sys: &Path) -> Option<String> {
    let text = super::read_limited(&sys.join(ACTIVE_CONSOLE), 64)?;
    let name = text.trim();
    is_console_tty(name).then(|| name.to_string())
}

/// `tty` followed by digits: the virtual consoles, not serial ports (`ttyS0`) or `/dev/tty`.
fn is_console_tty(name: &str) -> bool {
    name.strip_prefix("tty")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The entries of `dir` whose names are `wanted`.
fn list(dir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .take(MAX_ENTRIES)
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(&wanted))
        .map(|e| e.path())
        .collect()
}

fn newest_atime(dir: &Path, wanted: impl Fn(&str) -> bool) -> Option<SystemTime> {
    newest_of(&list(dir, wanted))
}

fn newest_of(paths: &[PathBuf]) -> Option<SystemTime> {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok()?.accessed().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, FileTimes};

    fn no_sys() -> PathBuf {
        PathBuf::from("/nonexistent/sys")
    }

    fn touch(path: &Path, atime: SystemTime) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let f = File::create(path).unwrap();
        f.set_times(FileTimes::new().set_accessed(atime).set_modified(atime))
            .unwrap();
    }

    #[test]
    fn newest_input_or_terminal_wins() {
        let dev = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| now - Duration::from_secs(s);
        touch(&dev.path().join("input/event0"), ago(500));
        touch(&dev.path().join("input/mice"), ago(1)); // not an event device
        touch(&dev.path().join("tty1"), ago(300));
        touch(&dev.path().join("ttyS0"), ago(2)); // a serial port
        touch(&dev.path().join("tty"), ago(3)); // the controlling terminal alias
        touch(&dev.path().join("pts/ptmx"), ago(4));
        assert_eq!(
            OwnerIdle::default().sample(dev.path(), &no_sys(), now),
            Some(Duration::from_secs(300))
        );
        touch(&dev.path().join("pts/3"), ago(40));
        assert_eq!(
            OwnerIdle::default().sample(dev.path(), &no_sys(), now),
            Some(Duration::from_secs(40))
        );
        touch(&dev.path().join("input/event7"), ago(7));
        assert_eq!(
            OwnerIdle::default().sample(dev.path(), &no_sys(), now),
            Some(Duration::from_secs(7))
        );
        // A timestamp from the future is "now".
        touch(&dev.path().join("tty2"), now + Duration::from_secs(60));
        assert_eq!(
            OwnerIdle::default().sample(dev.path(), &no_sys(), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn no_devices_is_unknown() {
        let dev = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        assert_eq!(
            OwnerIdle::default().sample(dev.path(), &no_sys(), now),
            None
        );
        touch(&dev.path().join("null"), now);
        touch(&dev.path().join("ttyS1"), now);
        std::fs::create_dir_all(dev.path().join("input")).unwrap();
        assert_eq!(
            OwnerIdle::default().sample(dev.path(), &no_sys(), now),
            None
        );
        assert_eq!(
            OwnerIdle::default().sample(Path::new("/nonexistent/dev"), &no_sys(), now),
            None
        );
    }

    #[test]
    fn consoles_are_listed_once_a_minute_and_statted_every_sample() {
        let dev = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| now - Duration::from_secs(s);
        touch(&dev.path().join("tty1"), ago(300));
        let mut idle = OwnerIdle::default();
        assert_eq!(
            idle.sample(dev.path(), &no_sys(), now),
            Some(Duration::from_secs(300))
        );
        // A listed console's new access shows at once.
        touch(&dev.path().join("tty1"), ago(5));
        assert_eq!(
            idle.sample(dev.path(), &no_sys(), now),
            Some(Duration::from_secs(5))
        );
        // A console made after the listing shows after the next one; a new terminal at once.
        touch(&dev.path().join("tty2"), ago(2));
        assert_eq!(
            idle.sample(dev.path(), &no_sys(), now),
            Some(Duration::from_secs(5))
        );
        let later = now + CONSOLES_RELISTED_EVERY;
        assert_eq!(
            idle.sample(dev.path(), &no_sys(), later),
            Some(CONSOLES_RELISTED_EVERY + Duration::from_secs(2))
        );
        touch(&dev.path().join("pts/7"), later);
        assert_eq!(
            idle.sample(dev.path(), &no_sys(), later),
            Some(Duration::ZERO)
        );
        // A console that went away is skipped.
        std::fs::remove_file(dev.path().join("tty2")).unwrap();
        std::fs::remove_file(dev.path().join("pts/7")).unwrap();
        assert_eq!(
            idle.sample(dev.path(), &no_sys(), later),
            Some(CONSOLES_RELISTED_EVERY + Duration::from_secs(5))
        );
    }

    #[test]
    fn with_the_foreground_console_known_only_it_and_the_one_before_are_statted_each_sample() {
        let dev = tempfile::tempdir().unwrap();
        let sys = tempfile::tempdir().unwrap();
        let active = sys.path().join(ACTIVE_CONSOLE);
        std::fs::create_dir_all(active.parent().unwrap()).unwrap();
        std::fs::write(&active, "tty1\n").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| now - Duration::from_secs(s);
        touch(&dev.path().join("tty1"), ago(300));
        touch(&dev.path().join("tty2"), ago(200));
        touch(&dev.path().join("tty3"), ago(400));
        let mut idle = OwnerIdle::default();
        // The listing stats every console.
        assert_eq!(
            idle.sample(dev.path(), sys.path(), now),
            Some(Duration::from_secs(200))
        );
        // Typing on the foreground console shows at once...
        touch(&dev.path().join("tty1"), ago(50));
        assert_eq!(
            idle.sample(dev.path(), sys.path(), now),
            Some(Duration::from_secs(50))
        );
        // ...on a background one (which takes no keyboard) only at the next listing.
        touch(&dev.path().join("tty3"), ago(10));
        assert_eq!(
            idle.sample(dev.path(), sys.path(), now),
            Some(Duration::from_secs(50))
        );
        let later = now + CONSOLES_RELISTED_EVERY;
        assert_eq!(
            idle.sample(dev.path(), sys.path(), later),
            Some(CONSOLES_RELISTED_EVERY + Duration::from_secs(10))
        );
        // A switch to tty2: it and tty1 (where the switch was typed) are watched.
        std::fs::write(&active, "tty2\n").unwrap();
        touch(&dev.path().join("tty1"), later);
        assert_eq!(
            idle.sample(dev.path(), sys.path(), later),
            Some(Duration::ZERO)
        );
        let then = later + Duration::from_secs(5);
        touch(&dev.path().join("tty2"), then);
        assert_eq!(
            idle.sample(dev.path(), sys.path(), then),
            Some(Duration::ZERO)
        );
        // Something that is not a console's name: every console is statted again.
        std::fs::write(&active, "../../etc/passwd").unwrap();
        let again = then + Duration::from_secs(5);
        touch(&dev.path().join("tty3"), again);
        assert_eq!(
            idle.sample(dev.path(), sys.path(), again),
            Some(Duration::ZERO)
        );
    }
}
