//! Checking a [`VmSpec`] before anything runs, and turning it into the VMM's launch source.

use std::path::{Path, PathBuf};

use novacron_vm::control::LaunchSource;
use novacron_vm::guest_kit::BuiltinGuest;

use crate::api::types::{Backend, VmSpec};

/// Guest memory bounds (MiB): the VMM needs room for its page tables and boot data; the
/// upper bound only stops absurd requests before the host's own limits are asked.
pub const MIN_MEM_MIB: u64 = 4;
pub const MAX_MEM_MIB: u64 = 1 << 20;
pub const MAX_VCPUS: u8 = 32;
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_COMMAND_ARGS: usize = 256;
pub const MAX_ARG_BYTES: usize = 4096;

/// Why a spec cannot run: every message names the field.
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
        let base_mib = novacron_vm::layout::PATTERN_BASE >> 20;
        if spec.guest.is_none() || mib == 0 || base_mib + mib > spec.mem_mib {
            return Err(format!(
                "prefill_mib: {mib} MiB at {base_mib} MiB must fit in mem_mib ({}) and goes \
                 with a builtin guest",
                spec.mem_mib
            ));
        }
    }
    match spec.backend {
        Backend::Kvm => validate_kvm(spec),
        Backend::Process => validate_process(spec),
    }
}

fn validate_kvm(spec: &VmSpec) -> Result<(), String> {
    if spec.command.is_some() {
        return Err("command: only the process backend runs a command".into());
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
                .map(|_| ())
                .map_err(|e| format!("guest: {e}"))
        }
        (None, Some(kernel)) => {
            readable_file("kernel", kernel)?;
            if let Some(initrd) = &spec.initrd {
                readable_file("initrd", initrd)?;
            }
            Ok(())
        }
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
    Ok(())
}

fn readable_file(field: &str, path: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(format!(
            "{field}: {path:?} must be an absolute path on this node"
        ));
    }
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err(format!("{field}: {path} is not a file")),
        Err(e) => Err(format!("{field}: {path}: {e}")),
    }
}

/// What the VMM boots for a validated KVM spec.
pub fn launch_source(spec: &VmSpec) -> Result<LaunchSource, String> {
    match (&spec.guest, &spec.kernel) {
        (Some(guest), None) => Ok(LaunchSource::Builtin {
            spec: guest.clone(),
        }),
        (None, Some(kernel)) => Ok(LaunchSource::Linux {
            kernel: PathBuf::from(kernel),
            initrd: spec.initrd.as_ref().map(PathBuf::from),
            cmdline: spec
                .cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".into()),
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
            (r#"{"kernel":"/nonexistent/bzImage"}"#, "kernel"),
            (r#"{"backend":"process"}"#, "command"),
            (r#"{"backend":"process","command":[]}"#, "empty"),
            (
                r#"{"backend":"process","command":["sleep","1"]}"#,
                "absolute",
            ),
            (
                r#"{"backend":"process","command":["/bin/x"],"guest":"builtin:hello"}"#,
                "process",
            ),
        ] {
            let err = validate(&spec(json)).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
