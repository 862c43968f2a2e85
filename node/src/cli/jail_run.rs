//! `novacron jail-run` (hidden): runs one `process`-backend command in the VM jail.
//!
//! The daemon spawns it (see `vms::process_backend`) in its own session with stdout and
//! stderr on the VM's `console.log`. While still single-threaded it prepares and enters the
//! sandbox of `novacron_vm::sandbox` (cgroup `proc-<id>` with the spec's memory and CPU
//! limits, rlimits, every namespace the host allows (the net namespace is empty: no
//! network), landlock), waits for the cgroup join, changes into the work directory, then
//! forks: the child drops to uid/gid 65534 and execve()s the command with a minimal
//! environment; the parent stays as a tiny supervisor (pid 1 of the new pid namespace) that
//! forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the command, reaps orphans, and
//! when the command ends records how (`exited N` or `killed S`) in the status file and
//! exits with N, or 128+S.
//!
//! Why a supervisor: the pid 1 of a pid namespace ignores every signal it has no handler
//! for, so a command run as pid 1 would never see the SIGTERM of a graceful stop; and a
//! pid 1 cannot die by a signal it sends itself, so the status file is the only exact
//! record of "killed by signal S" (the exit code 128+S is ambiguous).
//!
//! Files the command may reach (landlock): read and execute in /usr, /lib, /lib32, /lib64,
//! /bin, /sbin, /etc (those that exist), read /dev/zero, /dev/random, /dev/urandom,
//! read+write /dev/null, everything in its work directory. Not /proc: it is not remounted
//! for the new pid namespace, so it would list every host process; programs that need
//! /proc/self do not work. Not /tmp: TMPDIR points at the work directory.
//!
//! What this jail cannot do (it is weaker than the KVM backend): there is no seccomp filter,
//! because arbitrary programs need arbitrary system calls, so the whole kernel system-call
//! surface is reachable (as uid 65534 without capabilities and with no_new_privs); the
//! command shares the host kernel, where a guest VM would only reach the small KVM and
//! VMM interface. All process VMs share uid 65534 (the pid namespace keeps them from
//! signalling each other, landlock from reading each other's files). There is no pids
//! limit beyond what the memory limit implies.
//!
//! Errors before the command runs go to stderr with a distinct exit code, as env(1) does:
//! 125 the jail failed, 126 the command cannot be executed, 127 it was not found.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use clap::Args;
use novacron_vm::sandbox::{CgroupLimits, FsRule, Sandbox, SandboxPolicy};

use crate::vms::process_backend::{
    cgroup_name, validate_command, ExitRecord, EXIT_JAIL_FAILED, EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND, JAIL_GID, JAIL_UID,
};

#[derive(Args, Debug)]
pub struct JailRunArgs {
    /// The VM id (the cgroup is `novacron/proc-<id>`).
    #[arg(long)]
    id: String,
    /// The work directory (created by the daemon): the command's only writable place.
    #[arg(long)]
    work: PathBuf,
    /// Memory limit of the jail's cgroup, MiB.
    #[arg(long)]
    mem_mib: u64,
    /// CPU limit of the jail's cgroup, in CPUs.
    #[arg(long)]
    vcpus: u8,
    /// Where the supervisor records how the command ended.
    #[arg(long)]
    status_file: PathBuf,
    /// The program (absolute path) and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// System directories a dynamically linked program needs, read and execute only.
const SYSTEM_DIRS: [&str; 7] = ["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc"];
/// Devices readable by the command.
const READ_DEVICES: [&str; 3] = ["/dev/zero", "/dev/random", "/dev/urandom"];
/// The PATH the command gets.
const JAIL_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
/// Signals the supervisor passes on to the command.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// An error before the command runs, with the exit code that tells its kind.
struct Failure {
    code: u8,
    message: String,
}

fn jail_failed(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_JAIL_FAILED,
        message: message.into(),
    }
}

pub fn run(args: JailRunArgs) -> ExitCode {
    match jail_and_supervise(&args) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("novacron jail-run: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// The landlock rules: the system directories that exist, a few devices, the work dir.
fn fs_rules(work: &Path, exists: impl Fn(&Path) -> bool) -> Vec<FsRule> {
    let mut rules: Vec<FsRule> = SYSTEM_DIRS
        .iter()
        .chain(READ_DEVICES.iter())
        .map(Path::new)
        .filter(|p| exists(p))
        .map(FsRule::read_only)
        .collect();
    if exists(Path::new("/dev/null")) {
        rules.push(FsRule::read_write("/dev/null"));
    }
    rules.push(FsRule::read_write(work));
    rules
}

/// The whole sandbox policy of one process VM.
fn policy(args: &JailRunArgs) -> Result<SandboxPolicy, Failure> {
    let name = cgroup_name(&args.id).map_err(jail_failed)?;
    if args.mem_mib == 0 || args.mem_mib > (1 << 30) {
        return Err(jail_failed(format!(
            "--mem-mib {} is out of range (1 to 2^30 MiB)",
            args.mem_mib
        )));
    }
    if args.vcpus == 0 {
        return Err(jail_failed(
            "--vcpus 0: a process VM needs at least one CPU",
        ));
    }
    let mut policy = SandboxPolicy::new(name);
    policy.fs_rules = fs_rules(&args.work, Path::exists);
    policy.deny_network = true;
    policy.cgroup = Some(CgroupLimits {
        memory_bytes: Some(args.mem_mib << 20),
        cpus: Some(f64::from(args.vcpus)),
    });
    Ok(policy)
}

/// The command's environment: nothing of the daemon's, only what a program expects.
fn command_env(work: &Path) -> Result<Vec<CString>, Failure> {
    let mut home = b"HOME=".to_vec();
    home.extend_from_slice(work.as_os_str().as_bytes());
    let mut tmp = b"TMPDIR=".to_vec();
    tmp.extend_from_slice(work.as_os_str().as_bytes());
    [
        format!("PATH={JAIL_PATH}").into_bytes(),
        home,
        tmp,
        b"LANG=C".to_vec(),
    ]
    .into_iter()
    .map(|v| CString::new(v).map_err(|_| jail_failed("the work directory path has a NUL byte")))
    .collect()
}

/// The exit code of a failed execve: 127 when the program is not there, else 126.
fn exec_failure_code(errno: i32) -> u8 {
    match errno {
        libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Hands the work directory to the jail user (the daemon created it as root).
fn prepare_work_dir(work: &Path) -> Result<(), Failure> {
    let meta = std::fs::symlink_metadata(work).map_err(|e| {
        jail_failed(format!(
            "work directory {}: {e} (the daemon creates it before starting the jail)",
            work.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(jail_failed(format!(
            "work directory {} is not a directory",
            work.display()
        )));
    }
    std::os::unix::fs::chown(work, Some(JAIL_UID), Some(JAIL_GID)).map_err(|e| {
        jail_failed(format!(
            "cannot give the work directory {} to uid {JAIL_UID}: {e} (the jail needs root)",
            work.display()
        ))
    })
}

fn open_status_file(path: &Path) -> Result<OwnedFd, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| jail_failed(format!("status file {}: {e}", path.display())))?;
    Ok(file.into())
}

/// Sets `sig` to `handler` (SIG_IGN, SIG_DFL or a function address).
fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) -> Result<(), Failure> {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(jail_failed(format!(
            "sigaction({sig}): {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The command's pid, for the forwarding handler.
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = COMMAND_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn jail_and_supervise(args: &JailRunArgs) -> Result<u8, Failure> {
    let program = args
        .command
        .first()
        .ok_or_else(|| jail_failed("no command given after --"))?;
    validate_command(&args.command).map_err(|message| Failure {
        code: EXIT_NOT_FOUND,
        message,
    })?;
    let to_c = |s: &OsString| {
        CString::new(s.as_bytes())
            .map_err(|_| jail_failed(format!("command argument {s:?} has a NUL byte")))
    };
    let path = to_c(program)?;
    let argv: Vec<CString> = args.command.iter().map(to_c).collect::<Result<_, _>>()?;
    let envp = command_env(&args.work)?;
    let work_c = CString::new(args.work.as_os_str().as_bytes())
        .map_err(|_| jail_failed("the work directory path has a NUL byte"))?;
    let policy = policy(args)?;
    prepare_work_dir(&args.work)?;
    let status_fd = open_status_file(&args.status_file)?;

    // The pid-namespace waiter (the process the daemon knows) inherits these: a graceful
    // stop signals the whole process group, and only the supervisor must act on it.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        set_handler(sig, libc::SIG_IGN)?;
    }
    let mut sandbox = Sandbox::prepare(&policy)
        .map_err(|e| jail_failed(format!("preparing the jail: {}", error_chain(&e))))?;
    let report = sandbox
        .enter_process_wide()
        .map_err(|e| jail_failed(format!("entering the jail: {}", error_chain(&e))))?;
    sandbox
        .take_cgroup_join()
        .wait()
        .map_err(|e| jail_failed(format!("joining the jail's cgroup: {}", error_chain(&e))))?;
    tracing::debug!(%report, "process jail in force");
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::chdir(work_c.as_ptr()) } != 0 {
        return Err(jail_failed(format!(
            "cannot enter the work directory {}: {}",
            args.work.display(),
            std::io::Error::last_os_error()
        )));
    }
    // Orphans of the command come to us without a pid namespace too.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    // Block the forwarded signals across the fork so none is lost or runs a handler
    // before the command's pid is known.
    let forwarded = signal_set(&FORWARDED);
    let mut previous = signal_set(&[]);
    // SAFETY: valid sigset pointers.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &forwarded, &mut previous) };
    // SAFETY: getpid has no preconditions (in a pid namespace: 1, as the child sees us).
    let supervisor = unsafe { libc::getpid() };
    // SAFETY: this process is single-threaded (the sandbox checked it), so the child may
    // use the whole standard library until it execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(jail_failed(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        drop(status_fd);
        let failure = exec_command(&path, &argv, &envp, &previous, supervisor);
        eprintln!("novacron jail-run: {}", failure.message);
        // SAFETY: leave the child without running the parent's cleanup.
        unsafe { libc::_exit(i32::from(failure.code)) };
    }
    COMMAND_PID.store(pid, Ordering::Relaxed);
    for sig in FORWARDED {
        set_handler(sig, forward_signal as *const () as libc::sighandler_t)?;
    }
    // SAFETY: valid sigset pointers.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    Ok(supervise(pid, &status_fd))
}

/// In the child: drop to the jail user and exec. Returns only on failure. The command dies
/// with `supervisor` (its parent); one that lost it before the death signal was armed does
/// not run.
fn exec_command(
    path: &CString,
    argv: &[CString],
    envp: &[CString],
    mask: &libc::sigset_t,
    supervisor: libc::pid_t,
) -> Failure {
    // Rust ignores SIGPIPE, the waiter setup ignores SIGTERM/SIGINT/SIGHUP and the rlimit
    // step SIGXFSZ: ignored dispositions survive execve, so restore the defaults.
    for sig in FORWARDED
        .into_iter()
        .chain([libc::SIGPIPE, libc::SIGXFSZ, libc::SIGCHLD])
    {
        if let Err(f) = set_handler(sig, libc::SIG_DFL) {
            return f;
        }
    }
    // SAFETY: plain syscalls on valid pointers.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
        if novacron_vm::process::child_lifetime::die_with_parent(libc::SIGKILL, supervisor).is_err()
        {
            return jail_failed("the jail's supervisor ended before the command started");
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(JAIL_GID) != 0
            || libc::setuid(JAIL_UID) != 0
        {
            return jail_failed(format!(
                "cannot drop to uid/gid {JAIL_UID}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated strings in NULL-terminated arrays that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    let errno = last_errno();
    let code = exec_failure_code(errno);
    let what = if code == EXIT_NOT_FOUND {
        "not found"
    } else {
        "cannot be executed"
    };
    Failure {
        code,
        message: format!(
            "{} {what}: {} (the jail lets it run programs under {} only, as uid {JAIL_UID})",
            path.to_string_lossy(),
            std::io::Error::from_raw_os_error(errno),
            SYSTEM_DIRS.join(", ")
        ),
    }
}

/// Reaps children until the command ends; records how and returns the exit code.
fn supervise(command: libc::pid_t, status_fd: &OwnedFd) -> u8 {
    loop {
        let mut status = 0;
        // SAFETY: waiting for any child of ours.
        let rc = unsafe { libc::waitpid(-1, &mut status, 0) };
        if rc < 0 {
            if last_errno() == libc::EINTR {
                continue;
            }
            eprintln!(
                "novacron jail-run: waiting for the command failed: {}",
                std::io::Error::last_os_error()
            );
            return EXIT_JAIL_FAILED;
        }
        if rc != command {
            continue;
        }
        let record = if libc::WIFSIGNALED(status) {
            ExitRecord::Killed(libc::WTERMSIG(status))
        } else {
            ExitRecord::Exited(libc::WEXITSTATUS(status))
        };
        let line = record.to_line();
        // SAFETY: writing a byte slice to our own fd.
        let written =
            unsafe { libc::write(status_fd.as_raw_fd(), line.as_ptr().cast(), line.len()) };
        if written < 0 {
            eprintln!(
                "novacron jail-run: recording the command's end failed: {}",
                std::io::Error::last_os_error()
            );
        }
        return record.exit_code();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_keep_existing_system_dirs_and_the_work_dir() {
        let work = Path::new("/data/vm/work");
        let rules = fs_rules(work, |p| p != Path::new("/lib32"));
        assert!(rules.iter().all(|r| r.path != Path::new("/lib32")));
        assert!(rules.contains(&FsRule::read_only("/usr")));
        assert!(rules.contains(&FsRule::read_only("/etc")));
        assert!(rules.contains(&FsRule::read_only("/dev/urandom")));
        assert!(rules.contains(&FsRule::read_write("/dev/null")));
        assert_eq!(rules.last(), Some(&FsRule::read_write(work)));
        assert!(rules.iter().all(|r| !r.path.starts_with("/proc")));
        let writable: Vec<_> = rules
            .iter()
            .filter(|r| r.access == novacron_vm::sandbox::FsAccess::ReadWrite)
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(
            writable,
            vec![PathBuf::from("/dev/null"), work.to_path_buf()]
        );
    }

    #[test]
    fn environment_is_minimal() {
        let env = command_env(Path::new("/d/work")).ok().unwrap();
        let env: Vec<_> = env.iter().map(|e| e.to_str().unwrap().to_owned()).collect();
        assert_eq!(env.len(), 4);
        assert!(env[0].starts_with("PATH=/usr/local/bin:"));
        assert_eq!(env[1], "HOME=/d/work");
        assert_eq!(env[2], "TMPDIR=/d/work");
        assert_eq!(env[3], "LANG=C");
    }

    #[test]
    fn exec_errors_map_to_env_exit_codes() {
        assert_eq!(exec_failure_code(libc::ENOENT), 127);
        assert_eq!(exec_failure_code(libc::ENOTDIR), 127);
        assert_eq!(exec_failure_code(libc::EACCES), 126);
        assert_eq!(exec_failure_code(libc::ENOEXEC), 126);
    }

    fn args(id: &str, mem_mib: u64, vcpus: u8) -> JailRunArgs {
        JailRunArgs {
            id: id.into(),
            work: "/w".into(),
            mem_mib,
            vcpus,
            status_file: "/s".into(),
            command: vec!["/bin/true".into()],
        }
    }

    #[test]
    fn policy_takes_limits_from_the_spec_and_refuses_bad_ones() {
        let p = policy(&args("a1", 32, 2)).ok().unwrap();
        assert_eq!(p.vm_name, "proc-a1");
        assert!(p.deny_network && p.namespaces.net && p.namespaces.pid);
        let limits = p.cgroup.unwrap();
        assert_eq!(limits.memory_bytes, Some(32 << 20));
        assert_eq!(limits.cpus, Some(2.0));
        for bad in [args("a/b", 32, 1), args("a", 0, 1), args("a", 32, 0)] {
            let f = policy(&bad).err().unwrap();
            assert_eq!(f.code, EXIT_JAIL_FAILED, "{}", f.message);
        }
    }
}
