//! What VM runs one replica of a job: the job spec turned into the node's [`VmSpec`], which
//! the node checks and admits as it does any VM (`vms::spec::check`, its image directories,
//! its admission accounting).
//!
//! - A builtin guest gets the job's arguments as more `key=value` parameters.
//! - A kernel by path is booted from that path (it must lie in the running node's image
//!   directories); a kernel or initrd by chunk set from its file in the node's payload
//!   directory, where the runner fetched it first ([`payload_sets`]). The arguments extend
//!   the command line.
//! - A command gets the arguments appended, and its files (by chunk set) go with the VM:
//!   whichever node starts it fetches them.

use std::path::Path;

use crate::model::{Backend, ImageRef, JobSpec, VmSpec};
use crate::vms::spec::DEFAULT_CMDLINE;

/// The VM of replica `replica` of job `job_id` with spec `spec`, its kernel and initrd by
/// chunk set read from `payload_dir`. Errors name the spec field.
pub fn replica_vm_spec(
    job_id: &str,
    replica: u32,
    spec: &JobSpec,
    payload_dir: &Path,
) -> Result<VmSpec, String> {
    let p = &spec.payload;
    let image = |field: &str, r: &ImageRef| -> Result<String, String> {
        match (&r.path, &r.chunk_set) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(set)) => Ok(payload_dir.join(set).to_string_lossy().into_owned()),
            (None, None) => Err(format!("{field}: give a path or a chunk set")),
        }
    };
    let mut vm = VmSpec {
        name: Some(format!("job-{}-{replica}", &job_id[..job_id.len().min(12)])),
        backend: spec.backend,
        guest: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        command: None,
        mem_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        migration: spec.migration.modes.clone(),
        prefill_mib: None,
        // A process has no snapshots: it restarts from the beginning elsewhere.
        checkpoint_interval_s: spec
            .checkpoint_interval_s
            .filter(|_| spec.backend == Backend::Kvm),
        downtime_budget_ms: Some(spec.migration.downtime_budget_ms),
        files: Vec::new(),
        priority: Some(spec.priority),
    };
    match spec.backend {
        Backend::Kvm => {
            if let Some(guest) = &p.guest {
                vm.guest = Some(with_parameters(guest, &spec.arguments));
            } else if let Some(kernel) = &p.kernel {
                vm.kernel = Some(image("payload.kernel", kernel)?);
                vm.initrd = p
                    .initrd
                    .as_ref()
                    .map(|i| image("payload.initrd", i))
                    .transpose()?;
                let mut cmdline = DEFAULT_CMDLINE.to_string();
                for a in &spec.arguments {
                    cmdline.push(' ');
                    cmdline.push_str(a);
                }
                vm.cmdline = Some(cmdline);
            } else {
                return Err("payload: a kvm job boots a guest or a kernel".into());
            }
        }
        Backend::Process => {
            let mut command = p
                .command
                .clone()
                .ok_or("payload.command: the process backend runs a command")?;
            vm.files = p.files.clone();
            command.extend(spec.arguments.iter().cloned());
            vm.command = Some(command);
        }
    }
    Ok(vm)
}

/// The chunk sets a replica's node fetches into its payload directory before it checks the
/// VM: the kernel and initrd given by chunk set (a command's files travel in the VM spec).
pub fn payload_sets(spec: &JobSpec) -> Vec<String> {
    let p = &spec.payload;
    [&p.kernel, &p.initrd]
        .into_iter()
        .flatten()
        .filter(|r| r.path.is_none())
        .filter_map(|r| r.chunk_set.clone())
        .collect()
}

/// `builtin:NAME[:k=v,...]` with `args` as more `k=v` parameters.
fn with_parameters(guest: &str, args: &[String]) -> String {
    if args.is_empty() {
        return guest.to_string();
    }
    let name_end = guest.strip_prefix("builtin:").map_or(guest.len(), |rest| {
        "builtin:".len() + rest.find(':').unwrap_or(rest.len())
    });
    let sep = if name_end < guest.len() { "," } else { ":" };
    format!("{guest}{sep}{}", args.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> JobSpec {
        let s: JobSpec = serde_json::from_str(json).unwrap();
        s.validate().unwrap();
        s
    }

    #[test]
    fn builtin_guests_take_the_arguments_as_parameters() {
        assert_eq!(with_parameters("builtin:counter", &[]), "builtin:counter");
        let a = vec!["passes=4".to_string(), "words=8".to_string()];
        assert_eq!(
            with_parameters("builtin:counter", &a),
            "builtin:counter:passes=4,words=8"
        );
        assert_eq!(
            with_parameters("builtin:counter:base=0x1000", &a),
            "builtin:counter:base=0x1000,passes=4,words=8"
        );
        let s = spec(
            r#"{"payload":{"guest":"builtin:counter"},"arguments":["passes=2"],"memoryMib":32,
                "vcpus":2,"migration":{"modes":["cold"]}}"#,
        );
        let vm = replica_vm_spec(&"ab".repeat(32), 3, &s, Path::new("/p")).unwrap();
        assert_eq!(vm.guest.as_deref(), Some("builtin:counter:passes=2"));
        assert_eq!((vm.mem_mib, vm.vcpus), (32, 2));
        assert_eq!(vm.name.as_deref(), Some("job-abababababab-3"));
        assert_eq!(vm.migration, vec![crate::model::MigrationMode::Cold]);
        assert_eq!(vm.checkpoint_interval_s, None, "the node's own interval");
        assert_eq!(vm.downtime_budget_ms, Some(300), "the job's default budget");
        let s = spec(
            r#"{"payload":{"guest":"builtin:idle"},"checkpointIntervalS":7,
                "migration":{"downtimeBudgetMs":250}}"#,
        );
        let vm = replica_vm_spec(&"ab".repeat(32), 0, &s, Path::new("/p")).unwrap();
        assert_eq!(
            (vm.checkpoint_interval_s, vm.downtime_budget_ms),
            (Some(7), Some(250))
        );
        crate::vms::spec::validate(&vm).unwrap();
    }

    #[test]
    fn kernels_come_from_a_path_or_from_the_payload_directory_by_chunk_set() {
        let set = "cd".repeat(32);
        let s = spec(&format!(
            r#"{{"payload":{{"kernel":{{"chunkSet":"{set}"}},"initrd":{{"path":"/img/initrd"}}}},
                "arguments":["quiet"]}}"#
        ));
        assert_eq!(payload_sets(&s), std::slice::from_ref(&set));
        let vm = replica_vm_spec("j", 0, &s, Path::new("/data/payloads")).unwrap();
        assert_eq!(vm.kernel.unwrap(), format!("/data/payloads/{set}"));
        assert_eq!(vm.initrd.as_deref(), Some("/img/initrd"));
        let s = spec(
            r#"{"payload":{"kernel":{"path":"/data/images/k"},"initrd":{"path":"/img/initrd"}},
                "arguments":["quiet"]}"#,
        );
        assert!(payload_sets(&s).is_empty());
        let vm = replica_vm_spec("j", 0, &s, Path::new("/p")).unwrap();
        assert_eq!(vm.kernel.as_deref(), Some("/data/images/k"));
        assert_eq!(vm.initrd.as_deref(), Some("/img/initrd"));
        assert_eq!(vm.cmdline.unwrap(), format!("{DEFAULT_CMDLINE} quiet"));
    }

    #[test]
    fn commands_take_the_arguments() {
        let s = spec(
            r#"{"backend":"process","payload":{"command":["/bin/echo","a"]},"arguments":["b"],
                "migration":{"modes":["cold"]}}"#,
        );
        let vm = replica_vm_spec("j", 0, &s, Path::new("/p")).unwrap();
        assert_eq!(vm.command.unwrap(), ["/bin/echo", "a", "b"]);
        assert_eq!(vm.backend, Backend::Process);
        assert!(vm.files.is_empty());
        let set = "ef".repeat(32);
        let s = spec(&format!(
            r#"{{"backend":"process","payload":{{"command":["/bin/sh","run.sh"],
                "files":[{{"name":"run.sh","chunkSet":"{set}"}}]}},"migration":{{"modes":["cold"]}}}}"#
        ));
        let vm = replica_vm_spec("j", 0, &s, Path::new("/p")).unwrap();
        assert_eq!(vm.files, s.payload.files);
        assert!(
            payload_sets(&s).is_empty(),
            "a command's files travel in its VM spec"
        );
        crate::vms::spec::validate(&vm).unwrap();
    }
}
