//! Adoptable VMM processes: a VMM launched with `Launch.adopt` outlives its owner. When the
//! control channel closes the VM keeps running ("orphaned"); the next connection to the adopt
//! socket owns it ("adopted"). See docs/vm.md, "Adoption".
//!
//! This module holds the pieces both sides share and the small system-call wrappers:
//! - the spawner binds the socket ([`bind_listener`]); the VMM only accepts on the inherited
//!   listener ([`accept_owner`], [`refuse_one`]) and never binds or connects;
//! - the VMM's sender of events ([`Owner`]), which drops events while nobody owns the VM;
//! - the exit tombstone ([`write_tombstone`], [`read_tombstone`]);
//! - what a new owner needs about a process that is not its child: [`process_start_ticks`],
//!   [`PidFd`], and [`listens_on`] to tell a wrong pid from the VMM.
//!
//! What this cannot do: a process that is not our child cannot be reaped, so its exit status
//! is lost; only its tombstone says how it ended, and a VMM killed with SIGKILL writes none.

use std::io::{self, BufRead, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::control::{self, AdoptedState, Event, ExitReason};

/// How long a VMM whose guest ended while nobody owned it waits for a new owner before it
/// exits anyway (leaving only its tombstone).
pub const ORPHAN_EXIT_WAIT: Duration = Duration::from_secs(10 * 60);

/// The tombstone's file name, next to the adopt socket.
pub const TOMBSTONE_NAME: &str = "exit.json";

/// Longest tombstone accepted when reading one.
const MAX_TOMBSTONE_BYTES: u64 = 64 * 1024;

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What a VMM says when it cannot report to its owner (and is not adoptable).
pub(crate) const PARENT_GONE: &str = "cannot report to the parent";

/// Where a VMM adoptable through `socket` leaves its tombstone: `<dir of socket>/exit.json`.
pub fn tombstone_path(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(TOMBSTONE_NAME)
}

/// Errors about adopt sockets and tombstones; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("adopt socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("adopt socket {path} is {len} bytes long; Unix socket paths hold at most {MAX_SOCKET_PATH}: use a shorter directory")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("adopt socket {0} exists and is not a socket: remove it or choose another path")]
    NotASocket(PathBuf),
    #[error("adopt socket {0} is in use: a VMM answers on it (adopt it, or stop it first)")]
    InUse(PathBuf),
    #[error("tombstone {path} is larger than {MAX_TOMBSTONE_BYTES} bytes")]
    TombstoneTooLarge { path: PathBuf },
    #[error("tombstone {path} is not an exit reason: {source}")]
    BadTombstone {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    EncodeTombstone(serde_json::Error),
    #[error("tombstone {}: {source}", path.display())]
    WriteTombstone {
        path: PathBuf,
        #[source]
        source: crate::storage::StorageError,
    },
    /// `os_error` is None when the descriptor is a socket that does not listen.
    #[error(
        "the launch asks for adoption, but fd {fd} is not a listening socket ({}): \
         spawn the VMM with VmmProcess::spawn",
        listener_detail(.os_error)
    )]
    NotAListener {
        fd: RawFd,
        os_error: Option<io::Error>,
    },
}

fn listener_detail(os_error: &Option<io::Error>) -> String {
    match os_error {
        Some(e) => e.to_string(),
        None => "not listening".into(),
    }
}

/// Why the VMM could not tell its owner an event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnerError {
    /// The owner of a VMM that is not adoptable is gone. The text starts with
    /// [`PARENT_GONE`]; the VMM then exits without repeating it on stderr.
    #[error("{PARENT_GONE}: {0}")]
    ParentGone(control::ControlError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AdoptError + '_ {
    move |source| AdoptError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The absolute form of `socket` (its directory canonicalized), as the kernel records it at
/// bind: the spawner binds and the new owner looks it up in `/proc/net/unix` by this name.
pub fn absolute_socket_path(socket: &Path) -> Result<PathBuf, AdoptError> {
    let name = socket
        .file_name()
        .ok_or_else(|| AdoptError::NotASocket(socket.to_path_buf()))?;
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(std::fs::canonicalize(dir).map_err(io_err(dir))?.join(name))
}

/// Binds the adopt socket at `path` (mode 0600, set before it listens, so nobody can connect
/// while it is wider). A socket file already there is removed only if nothing answers on it.
/// Also removes a tombstone left in the directory by an earlier VMM: one adopt directory per
/// VM.
pub fn bind_listener(path: &Path) -> Result<UnixListener, AdoptError> {
    let path = absolute_socket_path(path)?;
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(AdoptError::PathTooLong {
            len: bytes.len(),
            path,
        });
    }
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(AdoptError::NotASocket(path)),
        Ok(_) => match UnixStream::connect(&path) {
            Ok(_) => return Err(AdoptError::InUse(path)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(&path).map_err(io_err(&path))?
            }
            Err(source) => return Err(AdoptError::Io { path, source }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(AdoptError::Io { path, source }),
    }
    let tombstone = tombstone_path(&path);
    match std::fs::remove_file(&tombstone) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tombstone)(e)),
        _ => {}
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err(&path)(io::Error::last_os_error()));
    }
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io_err(&path)(io::Error::last_os_error()));
    }
    let unbind = |e: io::Error| {
        let _ = std::fs::remove_file(&path);
        io_err(&path)(e)
    };
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(unbind)?;
    // SAFETY: listen(2) on the socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(unbind(io::Error::last_os_error()));
    }
    Ok(UnixListener::from(fd))
}

/// Reads the tombstone of the VMM adoptable through `socket`: None if there is none (the VMM
/// still runs, was killed, or never started).
pub fn read_tombstone(socket: &Path) -> Result<Option<ExitReason>, AdoptError> {
    let path = tombstone_path(socket);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AdoptError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    file.take(MAX_TOMBSTONE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    if bytes.len() as u64 > MAX_TOMBSTONE_BYTES {
        return Err(AdoptError::TombstoneTooLarge { path });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| AdoptError::BadTombstone { path, source })
}

/// Writes the tombstone atomically (temp + fsync + rename + fsync of the directory).
pub(crate) fn write_tombstone(socket: &Path, reason: &ExitReason) -> Result<(), AdoptError> {
    let path = tombstone_path(socket);
    let json = serde_json::to_vec(reason).map_err(AdoptError::EncodeTombstone)?;
    crate::storage::atomic::write_atomically(&path, |w| w.write_all(&json))
        .map_err(|source| AdoptError::WriteTombstone { path, source })
}

/// The start time of process `pid` in clock ticks after boot (field 22 of /proc/PID/stat):
/// with the pid it names one process for the life of the host, so a recycled pid is never
/// taken for the VMM. None if there is no such process.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let mut stat = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .take(4096)
        .read_to_end(&mut stat)
        .ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of a /proc/PID/stat line.
fn parse_start_ticks(stat: &[u8]) -> Option<u64> {
    stat_field(stat, 22)
}

/// Numeric field `field` (numbered from 1, as proc(5) does; 3 or later) of a /proc/PID/stat
/// line. The command name (field 2) is in parentheses and may itself hold ')' and spaces, so
/// the fields are counted from the last ')'.
pub fn stat_field(stat: &[u8], field: usize) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After the name, field 3 (state) is the first.
    rest.split_ascii_whitespace()
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The inodes of the listening Unix sockets bound at `path` (several if the file was removed
/// and bound again while the first one lived on), from /proc/net/unix.
fn listening_inodes(path: &Path) -> io::Result<Vec<u64>> {
    const ACCEPTING: u32 = 0x0001_0000;
    let file = std::fs::File::open("/proc/net/unix")?;
    let want = path.as_os_str().as_encoded_bytes();
    let mut inodes = Vec::new();
    for line in io::BufReader::new(file).split(b'\n') {
        let line = line?;
        let Some((flags, inode, bound)) = parse_proc_net_unix_line(&line) else {
            continue;
        };
        if flags & ACCEPTING != 0 && bound == want {
            inodes.push(inode);
        }
    }
    Ok(inodes)
}

/// (flags, inode, path) of one /proc/net/unix line: `Num RefCount Protocol Flags Type St
/// Inode Path`, space-separated with padded numbers; the path (which may hold spaces) is the
/// rest of the line.
fn parse_proc_net_unix_line(line: &[u8]) -> Option<(u32, u64, &[u8])> {
    let mut rest = line;
    let mut fields: [&[u8]; 7] = [&[]; 7];
    for field in fields.iter_mut() {
        rest = rest.trim_ascii_start();
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let text = |f: &[u8]| std::str::from_utf8(f).ok().map(str::to_owned);
    let flags = u32::from_str_radix(&text(fields[3])?, 16).ok()?;
    let inode = text(fields[6])?.parse().ok()?;
    let path = rest.trim_ascii();
    (!path.is_empty()).then_some((flags, inode, path))
}

/// Whether process `pid` holds a listening socket bound at `socket` on `fd`. Err if that
/// cannot be seen (no /proc, or no permission to look at the process's descriptors).
pub fn listens_on(pid: u32, fd: RawFd, socket: &Path) -> io::Result<bool> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"));
    let link = match link {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let link = link.as_os_str().to_string_lossy();
    let Some(inode) = link
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Ok(false);
    };
    Ok(listening_inodes(socket)?.contains(&inode))
}

/// A process handle that stays valid when the pid is recycled (pidfd_open(2)): wait for the
/// process and signal it although it is not our child.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    pub fn open(pid: u32) -> io::Result<Self> {
        let raw = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: pidfd_open with integer arguments.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pidfd_open just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(rc as RawFd) };
        Ok(Self { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits up to `timeout` (None: forever) for the process to end; true if it has.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one pollfd we own.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc >= 0 {
                return Ok(rc > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends `signal` to the process (never to a later process with the same pid).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with our pidfd, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The exit status if the process ended and is our child after all (a parent that
    /// abandoned and then adopted its own VMM); None otherwise (not ours: unknowable).
    pub fn try_reap(&self) -> Option<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        // SAFETY: waitpid on a pid whose pidfd we hold: while it is a zombie of ours the pid
        // cannot be recycled; if it is not our child this fails with ECHILD.
        let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        (rc == self.pid as libc::pid_t).then(|| std::process::ExitStatus::from_raw(status))
    }
}

/// The VMM's sender of events to its owner. While nobody owns an adoptable VMM, events are
/// dropped and counted; the newest guest report is kept for the next owner.
pub(crate) struct Owner {
    writer: Option<UnixStream>,
    adoptable: bool,
    dropped: u64,
    last_guest: Option<(u32, u64)>,
}

impl Owner {
    pub(crate) fn new(writer: UnixStream, adoptable: bool) -> Self {
        Self {
            writer: Some(writer),
            adoptable,
            dropped: 0,
            last_guest: None,
        }
    }

    pub(crate) fn adoptable(&self) -> bool {
        self.adoptable
    }

    /// Whether someone owns the VMM now (always true for a VMM that is not adoptable until
    /// a send fails).
    pub(crate) fn is_owned(&self) -> bool {
        self.writer.is_some()
    }

    /// Sends `event` to the owner. Fails only for a VMM that is not adoptable and whose
    /// owner is gone; an adoptable one becomes orphaned instead.
    pub(crate) fn send(&mut self, event: &Event) -> Result<(), OwnerError> {
        if let Event::Guest { code, value } = event {
            self.last_guest = Some((*code, *value));
        }
        let Some(writer) = self.writer.as_mut() else {
            self.dropped += 1;
            return Ok(());
        };
        match control::send(writer, event) {
            Ok(()) => Ok(()),
            Err(e) if self.adoptable => {
                self.orphan(&e.to_string());
                self.dropped += 1;
                Ok(())
            }
            Err(e) => Err(OwnerError::ParentGone(e)),
        }
    }

    /// The owner is gone: keep going without one (adoptable VMMs only).
    pub(crate) fn orphan(&mut self, why: &str) {
        if self.adoptable && self.writer.take().is_some() {
            tracing::warn!(why, "the owner is gone; the VM goes on until it is adopted");
        }
    }

    /// A new owner connected: it hears [`Event::Adopted`] first, then every event as before.
    pub(crate) fn adopt(
        &mut self,
        writer: UnixStream,
        vm_id: &str,
        state: AdoptedState,
        exit: Option<ExitReason>,
    ) -> Result<(), OwnerError> {
        self.writer = Some(writer);
        let event = Event::Adopted {
            vm_id: vm_id.to_string(),
            state,
            last_guest: self.last_guest,
            exit,
            dropped_events: std::mem::take(&mut self.dropped),
        };
        self.send(&event)
    }
}

/// Checks that the inherited `fd` is a listening socket and takes it.
pub(crate) fn take_listener(fd: RawFd) -> Result<OwnedFd, AdoptError> {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into `accepting`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || accepting == 0 {
        return Err(AdoptError::NotAListener {
            fd,
            os_error: (rc != 0).then(io::Error::last_os_error),
        });
    }
    // SAFETY: the spawner put the listener on this descriptor; nothing else in the process
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn accept(listener: &OwnedFd) -> io::Result<UnixStream> {
    loop {
        // SAFETY: accept4 on our listener, not asking for the peer address.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 just returned this descriptor; nothing else owns it.
            return Ok(unsafe { UnixStream::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
            _ => return Err(e),
        }
    }
}

/// Blocks until the next owner connects.
pub(crate) fn accept_owner(listener: &OwnedFd) -> io::Result<UnixStream> {
    accept(listener)
}

/// Accepts one connection and turns it away: the VMM has an owner already.
pub(crate) fn refuse_one(listener: &OwnedFd) {
    match accept(listener) {
        Ok(mut conn) => {
            let refusal = Event::CommandFailed {
                message: "this VMM already has an owner; only one connection at a time".into(),
            };
            let _ = control::send(&mut conn, &refusal);
            tracing::warn!("refused a second connection to the adopt socket");
        }
        Err(e) => tracing::warn!(error = %e, "accepting on the adopt socket failed"),
    }
}

/// Which descriptor [`wait_readable`] found ready.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ready {
    Control,
    Listener,
}

/// Blocks until the control connection has input (or hung up) or someone connects.
pub(crate) fn wait_readable(control: RawFd, listener: &OwnedFd) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: control,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two pollfds we own.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc > 0 {
            if fds[0].revents != 0 {
                return Ok(Ready::Control);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                return Ok(Ready::Listener);
            }
            return Err(io::Error::other(format!(
                "the adopt listener reports poll events {:#x}",
                fds[1].revents
            )));
        }
        let e = io::Error::last_os_error();
        if rc < 0 && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_survive_odd_command_names() {
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[19] = "123456".into();
        let tail = fields.join(" ");
        for name in ["novacron", "a) b (c", ") ) )", "x y", ""] {
            let line = format!("4242 ({name}) {tail}\n");
            assert_eq!(parse_start_ticks(line.as_bytes()), Some(123456), "{line}");
        }
        assert_eq!(parse_start_ticks(b"4242 (short) S 1 2"), None);
        assert_eq!(parse_start_ticks(b"no parenthesis at all"), None);
    }

    #[test]
    fn start_ticks_of_this_process_and_of_nobody() {
        let me = process_start_ticks(std::process::id()).unwrap();
        assert_eq!(process_start_ticks(std::process::id()), Some(me));
        assert_eq!(process_start_ticks(u32::MAX), None);
    }

    #[test]
    fn listener_refuses_live_sockets_and_replaces_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.sock");
        std::fs::write(tombstone_path(&path), b"{\"reason\":\"stopped\"}").unwrap();
        let listener = bind_listener(&path).unwrap();
        assert!(!tombstone_path(&path).exists(), "an old tombstone stays");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let err = bind_listener(&path).unwrap_err();
        assert!(matches!(err, AdoptError::InUse(_)), "{err}");
        assert!(err.to_string().contains("vmm.sock"), "{err}");
        let me = std::process::id();
        let fd = listener.as_raw_fd();
        assert!(listens_on(me, fd, &absolute_socket_path(&path).unwrap()).unwrap());
        assert!(!listens_on(me, 0, &path).unwrap());
        drop(listener);
        // The file is left behind, nobody answers: stale, so it is replaced. (A test running
        // in parallel may fork while the listener is open; its child holds a copy of the fd
        // until it execs, and a connect then still succeeds: try again briefly.)
        let mut again = bind_listener(&path);
        for _ in 0..100 {
            if !matches!(again, Err(AdoptError::InUse(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            again = bind_listener(&path);
        }
        let _again = again.unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            bind_listener(&file),
            Err(AdoptError::NotASocket(_))
        ));
        let long = dir.path().join("x".repeat(120));
        assert!(matches!(
            bind_listener(&long),
            Err(AdoptError::PathTooLong { .. })
        ));
    }

    #[test]
    fn proc_net_unix_lines_parse_with_padding_and_spaces() {
        let line = b"0000000000000000: 00000002 00000000 00010000 0001 01   812 /run/a b.sock";
        assert_eq!(
            parse_proc_net_unix_line(line),
            Some((0x10000, 812, &b"/run/a b.sock"[..]))
        );
        let unnamed = b"0000000000000000: 00000003 00000000 00000000 0001 03 4242";
        assert_eq!(parse_proc_net_unix_line(unnamed), None);
        assert_eq!(
            parse_proc_net_unix_line(b"Num RefCount Protocol Flags"),
            None
        );
    }

    #[test]
    fn tombstones_round_trip_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vmm.sock");
        assert_eq!(read_tombstone(&socket).unwrap(), None);
        let reason = ExitReason::GuestExit { status: 3 };
        write_tombstone(&socket, &reason).unwrap();
        assert_eq!(read_tombstone(&socket).unwrap(), Some(reason));
        std::fs::write(tombstone_path(&socket), b"{\"reason\":\"nope\"}").unwrap();
        let err = read_tombstone(&socket).unwrap_err();
        assert!(err.to_string().contains("exit.json"), "{err}");
        std::fs::write(tombstone_path(&socket), vec![b' '; 70 * 1024]).unwrap();
        assert!(matches!(
            read_tombstone(&socket),
            Err(AdoptError::TombstoneTooLarge { .. })
        ));
    }

    #[test]
    fn orphaned_owner_drops_events_and_tells_the_next_owner() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut owner = Owner::new(a, true);
        drop(b);
        owner.send(&Event::Guest { code: 1, value: 5 }).unwrap();
        assert!(!owner.is_owned());
        owner.send(&Event::Paused).unwrap();
        owner.send(&Event::Guest { code: 1, value: 9 }).unwrap();
        let (c, d) = UnixStream::pair().unwrap();
        owner.adopt(c, "vm1", AdoptedState::Running, None).unwrap();
        owner.send(&Event::Resumed).unwrap();
        let mut r = io::BufReader::new(d);
        assert_eq!(
            control::recv::<Event>(&mut r).unwrap(),
            Event::Adopted {
                vm_id: "vm1".into(),
                state: AdoptedState::Running,
                last_guest: Some((1, 9)),
                exit: None,
                dropped_events: 3,
            }
        );
        assert_eq!(control::recv::<Event>(&mut r).unwrap(), Event::Resumed);
    }

    #[test]
    fn owner_that_is_not_adoptable_fails_when_the_parent_is_gone() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut owner = Owner::new(a, false);
        drop(b);
        let err = owner.send(&Event::Paused).unwrap_err();
        assert!(err.to_string().starts_with(PARENT_GONE), "{err}");
    }

    #[test]
    fn pidfd_waits_for_and_kills_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert!(!pidfd.wait_exit(Some(Duration::from_millis(10))).unwrap());
        pidfd.signal(libc::SIGKILL).unwrap();
        assert!(pidfd.wait_exit(Some(Duration::from_secs(10))).unwrap());
        let status = pidfd.try_reap().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(child.wait().is_err(), "try_reap reaped it already");
        assert!(PidFd::open(u32::MAX).is_err());
    }
}
