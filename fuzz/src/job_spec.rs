//! `jobs::spec_file::parse_spec`: job spec files (YAML or JSON) a submitter writes and any
//! node may be handed.
//!
//! Invariants when text is accepted: it was within the size limit; the spec validates; its
//! signed JSON reads back to the same spec. Whatever the text, the error prints.

use novacron_node::jobs::spec_file::{parse_spec, to_signed_json, MAX_SPEC_FILE_BYTES};

use crate::Seed;

pub fn check(data: &[u8]) -> bool {
    let spec = match parse_spec("fuzz.yaml", data) {
        Ok(spec) => spec,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return false;
        }
    };
    assert!(data.len() <= MAX_SPEC_FILE_BYTES, "over the size limit");
    assert_eq!(
        spec.validate(),
        Ok(()),
        "an accepted spec does not validate"
    );
    let json = to_signed_json(&spec);
    let again = parse_spec("signed.json", &json)
        .unwrap_or_else(|e| panic!("the signed JSON of an accepted spec is refused: {e}"));
    assert_eq!(again, spec, "the signed JSON reads back differently");
    true
}

/// Small valid specs: YAML for each backend, and JSON.
pub fn specs() -> Vec<Seed> {
    let set = |c: &str| c.repeat(32);
    vec![
        (
            "guest.yaml",
            b"# a builtin guest\nname: count\npayload:\n  guest: builtin:counter:passes=4\nvcpus: 1\nmemoryMib: 64\nreplicas: 3\nmigration: {modes: [live, cold], downtimeBudgetMs: 200}\n"
                .to_vec(),
        ),
        (
            "kernel.yaml",
            format!(
                "payload:\n  kernel: {{path: /srv/images/vmlinux}}\n  initrd: {{chunkSet: {}}}\narguments: [console=ttyS0, quiet]\nmaxRuntimeS: 600\ncheckpointIntervalS: 30\npriority: 7\n",
                set("ab")
            )
            .into_bytes(),
        ),
        (
            "process.yaml",
            format!(
                "backend: process\npayload:\n  command: [/bin/sh, run.sh]\n  files:\n    - name: run.sh\n      chunkSet: {}\nmigration: {{modes: [cold]}}\nresult: {{serial: false, file: out/result.bin}}\nquorum: 1\n",
                set("cd")
            )
            .into_bytes(),
        ),
        (
            "minimal.json",
            br#"{"payload": {"guest": "builtin:hello"}}"#.to_vec(),
        ),
    ]
}

pub fn seeds() -> Vec<Seed> {
    specs()
}
