//! The chunk store's code (`novacron_mesh::chunks`, shared with the node) run under the
//! VMM's own seccomp filter and landlock rules, in a child process of the test binary: a
//! store change that makes a new system call (as `syncfs` once did) fails here, at unit-test
//! speed, with the call's number in the kernel log, before any VM is involved.
//!
//! Both durability paths of a batch run: one `syncfs` for the whole batch, and the per-file
//! `fdatasync` fallback it takes when the kernel refuses `syncfs` (forced here by a second,
//! stacked filter that makes `syncfs` fail with `EIO`). `jail_paths.rs` in the node's tests
//! runs the same code in the real `novacron vmm` process.

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use novacron_mesh::chunks::{ChunkId, ChunkStore, Level};
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};

    use crate::sandbox::landlock::{self, FsRule};
    use crate::sandbox::seccomp::{SeccompFilters, ThreadKind};

    /// Set in the child: the store directory it may use.
    const CHILD_DIR: &str = "NOVACRON_STORE_UNDER_JAIL_DIR";

    /// Runs the test `name` of this module again in a child process of the test binary;
    /// the child sees `dir` through [`CHILD_DIR`]. Fails with the child's output unless it
    /// exited 0; a SIGSYS death names the seccomp filter.
    fn run_in_child(name: &str, dir: &Path) {
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let test = format!("{module}::{name}");
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = Command::new(exe)
            .args([&test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir)
            .output()
            .expect("run the test binary again");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.signal() != Some(libc::SIGSYS),
            "the chunk store made a system call outside the VMM's seccomp allowlist (killed by \
             SIGSYS; `dmesg | grep syscall=` names it)\n{text}"
        );
        assert!(
            out.status.success(),
            "the chunk store failed in the jail: {:?}\n{text}",
            out.status
        );
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    }

    /// A distinct, compressible, non-zero 16 KiB chunk per `n`.
    fn chunk(n: u32) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..16 * 1024u32).map(|i| (i / 64 + n * 7) as u8).collect();
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        bytes
    }

    /// On a fresh thread: landlock to `dir`, the `Vmm` filter (plus `extra`), then what the
    /// VMM does with a store: open it (removing a stale temp file), keep a batch of chunks,
    /// look them up, read them back, put and remove one.
    fn store_work_in_jail(dir: &Path, extra: Option<seccompiler::BpfProgram>) {
        let filters = SeccompFilters::compile().expect("compile the filters");
        let rules = landlock::prepare(&[FsRule::read_write(dir)], true).expect("landlock rules");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("the store's temp dir");
        // A temp file of a writer that no longer runs: `open` removes it.
        std::fs::write(tmp.join("999999999-0-0.tmp"), b"x").expect("plant a stale temp");
        let root = dir.to_path_buf();
        let worker = std::thread::spawn(move || {
            rules.restrict_current_thread().expect("landlock");
            filters
                .apply_to_current_thread(ThreadKind::Vmm)
                .expect("the Vmm filter");
            if let Some(extra) = &extra {
                seccompiler::apply_filter(extra).expect("the extra filter");
            }
            let store = ChunkStore::open(&root, Level::default()).expect("open the store");
            let mut batch = store.batch();
            let ids: Vec<ChunkId> = (0..64)
                .map(|n| batch.put(&chunk(n)).expect("add to the batch"))
                .collect();
            let outcome = batch.commit().expect("commit the batch");
            assert_eq!(outcome.written, 64);
            assert_eq!(store.have(&ids).count_ones(), 64);
            assert_eq!(store.get(&ids[7]).expect("read a chunk back"), chunk(7));
            let single = store.put(&chunk(1000)).expect("a single put");
            assert!(single.written);
            assert!(store.remove(&single.id).expect("remove a chunk"));
        });
        worker.join().expect("the jailed store work");
        assert!(
            !dir.join("tmp").join("999999999-0-0.tmp").exists(),
            "the stale temp file stayed"
        );
        assert!(std::fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
    }

    /// A filter that makes `syncfs` fail with `EIO` and allows everything else; stacked on
    /// the `Vmm` filter it forces the store's per-file fallback.
    fn syncfs_fails() -> seccompiler::BpfProgram {
        let arch = TargetArch::try_from(std::env::consts::ARCH).expect("a seccomp arch");
        let filter = SeccompFilter::new(
            [(libc::SYS_syncfs, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EIO as u32),
            arch,
        )
        .expect("the syncfs filter");
        filter.try_into().expect("compile the syncfs filter")
    }

    #[test]
    fn a_store_batch_synced_with_syncfs_runs_in_the_jail() {
        match std::env::var_os(CHILD_DIR) {
            Some(dir) => store_work_in_jail(Path::new(&dir), None),
            None => {
                let dir = tempfile::tempdir().unwrap();
                run_in_child(
                    "a_store_batch_synced_with_syncfs_runs_in_the_jail",
                    dir.path(),
                );
            }
        }
    }

    #[test]
    fn a_store_batch_synced_file_by_file_runs_in_the_jail() {
        match std::env::var_os(CHILD_DIR) {
            Some(dir) => store_work_in_jail(Path::new(&dir), Some(syncfs_fails())),
            None => {
                let dir = tempfile::tempdir().unwrap();
                run_in_child(
                    "a_store_batch_synced_file_by_file_runs_in_the_jail",
                    dir.path(),
                );
            }
        }
    }
}
