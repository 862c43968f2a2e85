//! Checking a [`VmSpec`] completely before anything is recorded, and turning it into the
//! VMM's launch source: every field, a builtin guest's parameters against the guest's
//! memory, and a Linux kernel and initrd, which must lie in the node's image directories
//! (`vm.imageDirs`) and pass every check of the VMM's loader (`novacron_vm::boot::check_linux`).
//! Errors name the field; none says whether a file outside the image directories exists,
//! and none quotes a file's bytes.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use novacron_vm::boot::BootError;
use novacron_vm::guest_kit::BuiltinGuest;
use novacron_vm::process::control::LaunchSource;

use crate::api::types::{Backend, VmSpec};

/// The command line a kernel boots with when the spec gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Guest memory bounds (MiB): the VMM needs room for its page tables and boot data; the
/// upper bound only stops absurd requests before the host's own limits are asked.
pub const MIN_MEM_MIB: u64 = 4;
pub const MAX_MEM_MIB: u64 = 1 << 20;
pub const MAX_VCPUS: u8 = 32;
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_COMMAND_ARGS: usize = 256;
pub const MAX_ARG_BYTES: usize = 4096;

/// Checks `spec` completely (see the module doc) and returns it as it is to be recorded:
/// a kernel and initrd by the canonical paths that were checked. Reads the kernel's headers
/// and the initrd's size: blocking.
pub fn check(mut spec: VmSpec, image_dirs: &[PathBuf]) -> Result<VmSpec, String> {
    validate(&spec)?;
    let Some(kernel) = &spec.kernel else {
        return Ok(spec);
    };
    let (kernel_path, mut kernel_file) = open_image("kernel", kernel, image_dirs)?;
    let initrd = spec
        .initrd
        .as_deref()
        .map(|i| open_image("initrd", i, image_dirs))
        .transpose()?;
    let (initrd_path, mut initrd_file) = initrd.unzip();
    novacron_vm::boot::check_linux(
        spec.mem_mib << 20,
        &mut kernel_file,
        initrd_file.as_mut(),
        &cmdline(&spec),
    )
    .map_err(|e| format!("{}: {e}", boot_error_field(&e)))?;
    spec.kernel = Some(kernel_path);
    spec.initrd = initrd_path;
    Ok(spec)
}

/// The spec field a loader error is about.
fn boot_error_field(e: &BootError) -> &'static str {
    match e {
        BootError::CmdlineTooLong { .. } | BootError::BadCmdline { .. } => "cmdline",
        BootError::InitrdRead { .. }
        | BootError::InitrdEmpty { .. }
        | BootError::InitrdDoesNotFit { .. } => "initrd",
        BootError::MemorySize { .. } => "mem_mib",
        _ => "kernel",
    }
}

/// Opens `path` (the spec's `field`) if it names a regular file inside one of
/// `image_dirs`, after resolving symlinks; returns its canonical path and the open file.
/// A path outside is refused before the file system is asked about it.
fn open_image(field: &str, path: &str, image_dirs: &[PathBuf]) -> Result<(String, File), String> {
    let listed = || {
        image_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let outside = || {
        format!(
            "{field}: {path:?} is not in this node's image directories ({}): put kernels and \
             initrds there (config vm.imageDirs)",
            listed()
        )
    };
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!(
            "{field}: {path:?} must be an absolute path in this node's image directories ({})",
            listed()
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{field}: {path:?}: \"..\" is not allowed in the path"
        ));
    }
    // Configured directories as given and as resolved (a directory that does not exist
    // holds nothing).
    let dirs: Vec<(PathBuf, Option<PathBuf>)> = image_dirs
        .iter()
        .map(|d| (d.clone(), std::fs::canonicalize(d).ok()))
        .collect();
    let lexically_inside = dirs.iter().any(|(given, resolved)| {
        p.starts_with(given) || resolved.as_ref().is_some_and(|r| p.starts_with(r))
    });
    if !lexically_inside {
        return Err(outside());
    }
    let real = std::fs::canonicalize(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{field}: no file {path:?} in this node's image directories ({})",
            listed()
        ),
        _ => format!("{field}: {path:?} cannot be read: {e}"),
    })?;
    // A symlink inside may point anywhere: the resolved path must be inside too.
    if !dirs
        .iter()
        .any(|(_, resolved)| resolved.as_ref().is_some_and(|r| real.starts_with(r)))
    {
        return Err(outside());
    }
    // No symlink left to follow; non-blocking so a FIFO cannot hang the request.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
        .map_err(|e| format!("{field}: {path:?} cannot be read: {e}"))?;
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{field}: {path:?} is not a regular file")),
        Err(e) => return Err(format!("{field}: {path:?} cannot be read: {e}")),
    }
    let real = real
        .into_os_string()
        .into_string()
        .map_err(|_| format!("{field}: {path:?} resolves to a path that is not UTF-8"))?;
    Ok((real, file))
}

/// The kernel command line of a kernel spec.
fn cmdline(spec: &VmSpec) -> String {
    spec.cmdline
        .clone()
        .unwrap_or_else(|| DEFAULT_CMDLINE.to_string())
}

/// Why a spec's fields cannot run, without looking at files: every message names the field.
pub fn validate(spec: &VmSpec) -> Result<(), String> {
    if let Some(name) = &spec.name {
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(format!(
                "name: 1-{MAX_NAME_CHARS} characters, got {}",
                name.len()
            ));
        }
        if name.chars().any(char::is_control) {
            return Err("name: control characters are not allowed".into());
        }
    }
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&spec.mem_mib) {
        return Err(format!(
            "mem_mib: {} is outside {MIN_MEM_MIB}..={MAX_MEM_MIB}",
            spec.mem_mib
        ));
    }
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(format!("vcpus: {} is outside 1..={MAX_VCPUS}", spec.vcpus));
    }
    if spec.migration.is_empty() {
        return Err("migration: give at least one mode (live, warm, cold)".into());
    }
    for (i, m) in spec.migration.iter().enumerate() {
        if spec.migration[..i].contains(m) {
            return Err(format!("migration: {m:?} is listed twice"));
        }
    }
    if let Some(mib) = spec.prefill_mib {
        let base_mib = novacron_vm::machine::layout::PATTERN_BASE >> 20;
        if spec.guest.is_none() || mib == 0 || base_mib + mib > spec.mem_mib {
            return Err(format!(
                "prefill_mib: {mib} MiB at {base_mib} MiB must fit in mem_mib ({}) and goes \
                 with a builtin guest",
                spec.mem_mib
            ));
        }
    }
    if let Some(every) = spec.checkpoint_interval_s {
        let range = crate::model::CHECKPOINT_INTERVAL_S;
        if !range.contains(&every) || spec.backend != Backend::Kvm {
            return Err(format!(
                "checkpoint_interval_s: {every} must be within {}..={} seconds, on a kvm VM \
                 (a process has no snapshots)",
                range.start(),
                range.end()
            ));
        }
    }
    if let Some(p) = spec.priority {
        let max = crate::model::MAX_PRIORITY;
        if p > max {
            return Err(format!("priority: {p} is outside 0..={max}"));
        }
    }
    if let Some(b) = spec.downtime_budget_ms {
        let max = crate::model::MAX_DOWNTIME_BUDGET_MS;
        if b == 0 || b > max {
            return Err(format!("downtime_budget_ms: {b} is outside 1..={max}"));
        }
    }
    match spec.backend {
        Backend::Kvm => validate_kvm(spec),
        Backend::Process => validate_process(spec),
    }
}

fn validate_kvm(spec: &VmSpec) -> Result<(), String> {
    if spec.command.is_some() || !spec.files.is_empty() {
        return Err("command, files: only the process backend runs a command".into());
    }
    match (&spec.guest, &spec.kernel) {
        (Some(_), Some(_)) => Err("give either guest or kernel, not both".into()),
        (None, None) => {
            Err("give guest (e.g. \"builtin:counter\") or kernel (a path on this node)".into())
        }
        (Some(guest), None) => {
            if spec.initrd.is_some() || spec.cmdline.is_some() {
                return Err("initrd and cmdline go with kernel, not guest".into());
            }
            guest
                .parse::<BuiltinGuest>()
                .and_then(|g| g.validate(spec.mem_mib << 20))
                .map_err(|e| format!("guest: {e}"))
        }
        // The files are checked by `check`.
        (None, Some(_)) => Ok(()),
    }
}

fn validate_process(spec: &VmSpec) -> Result<(), String> {
    if spec.guest.is_some() || spec.kernel.is_some() || spec.initrd.is_some() {
        return Err("the process backend runs command, not guest or kernel".into());
    }
    let Some(command) = &spec.command else {
        return Err("command: the process backend needs the program and its arguments".into());
    };
    if command.is_empty() || command[0].is_empty() {
        return Err("command: empty".into());
    }
    if command.len() > MAX_COMMAND_ARGS {
        return Err(format!("command: more than {MAX_COMMAND_ARGS} arguments"));
    }
    if let Some(arg) = command
        .iter()
        .find(|a| a.len() > MAX_ARG_BYTES || a.contains('\0'))
    {
        return Err(format!(
            "command: an argument is over {MAX_ARG_BYTES} bytes or has a NUL: {:?}",
            arg.chars().take(40).collect::<String>()
        ));
    }
    if !Path::new(&command[0]).is_absolute() {
        return Err(format!(
            "command: {:?} must be an absolute path (the jail has no PATH search)",
            command[0]
        ));
    }
    crate::model::check_payload_files(&spec.files)
        .map_err(|(under, reason)| format!("files{under}: {reason}"))
}

/// What the VMM boots for a checked KVM spec.
pub fn launch_source(spec: &VmSpec) -> Result<LaunchSource, String> {
    match (&spec.guest, &spec.kernel) {
        (Some(guest), None) => Ok(LaunchSource::Builtin {
            spec: guest.clone(),
        }),
        (None, Some(kernel)) => Ok(LaunchSource::Linux {
            kernel: PathBuf::from(kernel),
            initrd: spec.initrd.as_ref().map(PathBuf::from),
            cmdline: cmdline(spec),
        }),
        _ => Err("the spec names no guest".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> VmSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn good_specs_pass() {
        validate(&spec(r#"{"guest":"builtin:counter"}"#)).unwrap();
        validate(&spec(
            r#"{"backend":"process","command":["/bin/sleep","1"],"mem_mib":16}"#,
        ))
        .unwrap();
        let exe = std::env::current_exe().unwrap();
        validate(&spec(&format!(
            r#"{{"kernel":{:?}}}"#,
            exe.display().to_string()
        )))
        .unwrap();
    }

    #[test]
    fn bad_specs_name_the_field() {
        for (json, needle) in [
            (r#"{}"#, "guest"),
            (r#"{"guest":"builtin:nope"}"#, "guest"),
            (r#"{"guest":"builtin:counter","kernel":"/k"}"#, "not both"),
            (r#"{"guest":"builtin:counter","mem_mib":0}"#, "mem_mib"),
            (
                r#"{"guest":"builtin:counter","mem_mib":99999999999}"#,
                "mem_mib",
            ),
            (r#"{"guest":"builtin:counter","vcpus":0}"#, "vcpus"),
            (r#"{"guest":"builtin:counter","vcpus":200}"#, "vcpus"),
            (r#"{"guest":"builtin:counter","migration":[]}"#, "migration"),
            (
                r#"{"guest":"builtin:counter","migration":["live","live"]}"#,
                "twice",
            ),
            (r#"{"guest":"builtin:counter","name":""}"#, "name"),
            (r#"{"guest":"builtin:counter","name":"a\u0007"}"#, "control"),
            (
                r#"{"guest":"builtin:counter","command":["/bin/true"]}"#,
                "command",
            ),
            (r#"{"guest":"builtin:counter","cmdline":"x"}"#, "cmdline"),
            (r#"{"kernel":"relative/bzImage"}"#, "absolute"),
            (
                r#"{"guest":"builtin:idle","mem_mib":64,"prefill_mib":64}"#,
                "prefill_mib",
            ),
            (r#"{"backend":"process"}"#, "command"),
            (
                r#"{"guest":"builtin:idle","checkpoint_interval_s":4}"#,
                "checkpoint_interval_s",
            ),
            (
                r#"{"backend":"process","command":["/bin/x"],"migration":["cold"],"checkpoint_interval_s":60}"#,
                "checkpoint_interval_s",
            ),
            (
                r#"{"guest":"builtin:idle","downtime_budget_ms":0}"#,
                "downtime_budget_ms",
            ),
            (
                r#"{"guest":"builtin:idle","downtime_budget_ms":60001}"#,
                "downtime_budget_ms",
            ),
            (r#"{"backend":"process","command":[]}"#, "empty"),
            (
                r#"{"backend":"process","command":["sleep","1"]}"#,
                "absolute",
            ),
            (
                r#"{"backend":"process","command":["/bin/x"],"guest":"builtin:hello"}"#,
                "process",
            ),
            (
                r#"{"guest":"builtin:dirtier","mem_mib":64}"#,
                "guest: builtin:dirtier: data range",
            ),
            (
                r#"{"guest":"builtin:counter:passes=1,base=0x0","mem_mib":64}"#,
                "guest: builtin:counter: data range [0x0,",
            ),
        ] {
            let err = check(spec(json), &[]).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
        // The builtin guests' own defaults fit their defaults.
        validate(&spec(r#"{"guest":"builtin:dirtier","mem_mib":256}"#)).unwrap();
    }

    /// The smallest bzImage the loader takes: boot protocol 2.15, 64-bit entry,
    /// relocatable, decompressing into 2-6 MiB.
    fn tiny_bzimage() -> Vec<u8> {
        let mut b = vec![0u8; 2 * 512 + 0x300];
        let fields: [(usize, &[u8]); 11] = [
            (0x1F1, &[1]),                        // setup_sects
            (0x1FE, &[0x55, 0xAA]),               // boot_flag
            (0x201, &[0x6A]),                     // the header ends at 0x26C
            (0x202, b"HdrS"),                     // header magic
            (0x206, &[0x0F, 0x02]),               // version 2.15
            (0x211, &[0x01]),                     // LOADED_HIGH
            (0x230, &0x20_0000u32.to_le_bytes()), // kernel_alignment
            (0x234, &[1]),                        // relocatable
            (0x236, &[0x01, 0x00]),               // XLF_KERNEL_64
            (0x258, &0x20_0000u64.to_le_bytes()), // pref_address
            (0x260, &0x40_0000u32.to_le_bytes()), // init_size
        ];
        for (at, bytes) in fields {
            b[at..at + bytes.len()].copy_from_slice(bytes);
        }
        b
    }

    /// A data directory's image directory holding a kernel and an initrd, and a file
    /// outside it.
    struct Images {
        _root: tempfile::TempDir,
        dirs: Vec<PathBuf>,
        kernel: PathBuf,
        initrd: PathBuf,
        outside: PathBuf,
    }

    fn images() -> Images {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("images");
        std::fs::create_dir(&dir).unwrap();
        let kernel = dir.join("bzImage");
        std::fs::write(&kernel, tiny_bzimage()).unwrap();
        let initrd = dir.join("initrd.img");
        std::fs::write(&initrd, [7u8; 4096]).unwrap();
        let outside = root.path().join("secret");
        std::fs::write(&outside, b"root:x:0:0:root:/root:/bin/bash\n").unwrap();
        Images {
            dirs: vec![dir],
            kernel,
            initrd,
            outside,
            _root: root,
        }
    }

    fn kernel_spec(kernel: &Path, initrd: Option<&Path>, mem_mib: u64) -> VmSpec {
        let mut s = spec(&format!(r#"{{"kernel":{:?},"mem_mib":{mem_mib}}}"#, kernel));
        s.initrd = initrd.map(|p| p.to_str().unwrap().to_string());
        s
    }

    #[test]
    fn a_kernel_in_the_image_directories_passes_the_loaders_checks() {
        let im = images();
        // Named through a symlink inside: recorded by the path that was checked.
        let link = im.dirs[0].join("current");
        std::os::unix::fs::symlink(&im.kernel, &link).unwrap();
        let checked = check(kernel_spec(&link, Some(&im.initrd), 64), &im.dirs).unwrap();
        let real = std::fs::canonicalize(&im.kernel).unwrap();
        assert_eq!(checked.kernel.as_deref(), real.to_str());
        let real_initrd = std::fs::canonicalize(&im.initrd).unwrap();
        assert_eq!(checked.initrd.as_deref(), real_initrd.to_str());
        // The same kernel cannot decompress into 4 MiB, nor the initrd fit in 8.
        let err = check(kernel_spec(&im.kernel, None, 4), &im.dirs).unwrap_err();
        assert!(err.starts_with("kernel: "), "{err}");
        let big = im.dirs[0].join("big.img");
        std::fs::write(&big, vec![1u8; 8 << 20]).unwrap();
        let err = check(kernel_spec(&im.kernel, Some(&big), 8), &im.dirs).unwrap_err();
        assert!(
            err.starts_with("initrd: ") && err.contains("does not fit"),
            "{err}"
        );
        let mut long = kernel_spec(&im.kernel, None, 64);
        long.cmdline = Some("x".repeat(70_000));
        let err = check(long, &im.dirs).unwrap_err();
        assert!(err.starts_with("cmdline: "), "{err}");
    }

    #[test]
    fn files_outside_the_image_directories_are_refused_without_a_word_of_them() {
        let im = images();
        let dir = im.dirs[0].to_str().unwrap();
        // Outside: the same answer whether the file exists or not, no byte of it.
        let exists = check(kernel_spec(&im.outside, None, 64), &im.dirs).unwrap_err();
        let missing = check(
            kernel_spec(&im.outside.with_file_name("nothing"), None, 64),
            &im.dirs,
        )
        .unwrap_err();
        for err in [&exists, &missing] {
            assert!(err.starts_with("kernel: ") && err.contains(dir), "{err}");
            assert!(
                err.contains("not in this node's image directories"),
                "{err}"
            );
            assert!(!err.contains("root:") && !err.contains("72 6f"), "{err}");
        }
        assert_eq!(
            exists.replace("secret", "nothing"),
            missing,
            "the answer tells nothing of the file"
        );
        let err = check(kernel_spec(Path::new("/etc/passwd"), None, 64), &im.dirs).unwrap_err();
        assert!(
            err.contains("not in this node's image directories"),
            "{err}"
        );
        // ".." out of the directory, and a symlink inside pointing out.
        let dotdot = im.dirs[0].join("../secret");
        let err = check(kernel_spec(&dotdot, None, 64), &im.dirs).unwrap_err();
        assert!(err.contains("\"..\""), "{err}");
        let escape = im.dirs[0].join("escape");
        std::os::unix::fs::symlink(&im.outside, &escape).unwrap();
        let err = check(kernel_spec(&escape, None, 64), &im.dirs).unwrap_err();
        assert!(
            err.contains("not in this node's image directories"),
            "{err}"
        );
        // The initrd is held to the same rule.
        let err = check(kernel_spec(&im.kernel, Some(&im.outside), 64), &im.dirs).unwrap_err();
        assert!(err.starts_with("initrd: "), "{err}");
        // Inside but not a kernel: said without its bytes.
        let text = im.dirs[0].join("notes.txt");
        std::fs::write(&text, b"root:x:0:0").unwrap();
        let err = check(kernel_spec(&text, None, 64), &im.dirs).unwrap_err();
        assert!(
            err.contains("no boot signature") && !err.contains("72 6f"),
            "{err}"
        );
        // Inside but not a regular file (a FIFO would block a reader).
        let err = check(kernel_spec(&im.dirs[0], None, 64), &im.dirs).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        // No image directory at all: nothing is allowed.
        let err = check(kernel_spec(&im.kernel, None, 64), &[]).unwrap_err();
        assert!(
            err.contains("not in this node's image directories"),
            "{err}"
        );
    }
}
