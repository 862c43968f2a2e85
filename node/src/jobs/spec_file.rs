//! A job spec file: YAML (or JSON, which is YAML) read into a checked [`JobSpec`], each fault
//! named with the file's name and, where the file has it, the line:
//! `job.yaml line 7: memoryMib: 1 is outside 4..=1048576`.
//!
//! In order: the size ([`MAX_SPEC_FILE_BYTES`], before any parsing), UTF-8, keys given twice
//! (which serde would refuse without a line, or silently keep the last of), the parse (unknown
//! keys are named by serde, with the line), then [`JobSpec::validate`], whose field path
//! (`payload.files[0].name`) is looked up in the file's [`KeyLines`]; a field the file does
//! not set (a default, or a rule about a missing key) is named with the nearest enclosing key
//! the file has, or with no line.
//!
//! [`to_signed_json`] is what a submitter signs: the checked spec with every default filled
//! in, as JSON, so every node reads the same values whatever its own defaults.
//!
//! What this cannot do: check what only the running node can (a kernel path inside its image
//! directories, a chunk set it can fetch); follow YAML aliases when it looks lines up (a value
//! reached through an alias is named at the alias's key, or without a line); keep comments.

use std::io::Read;
use std::path::Path;

use crate::model::JobSpec;
use crate::yaml_keys::{key_lines, KeyLines};

/// Largest spec file read; larger ones are refused before parsing.
pub const MAX_SPEC_FILE_BYTES: usize = 64 * 1024;

/// Why a spec file was refused. `name` is the file as the user gave it (`job.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecFileError {
    #[error("{name}: cannot read it: {reason}")]
    Read { name: String, reason: String },
    #[error(
        "{name}: {len} bytes is over the {MAX_SPEC_FILE_BYTES}-byte limit of a job spec (large \
         inputs go in chunk sets: `novacron chunks publish`)"
    )]
    TooLarge { name: String, len: usize },
    #[error("{name}: not UTF-8 text (byte {offset}): a job spec is YAML or JSON text")]
    NotText { name: String, offset: usize },
    #[error("{name}: empty: a job spec needs at least a payload, e.g. `payload: {{guest: builtin:hello}}`")]
    Empty { name: String },
    #[error("{name} line {line}: key {key} is given twice (first at line {first_line})")]
    KeyTwice {
        name: String,
        line: usize,
        key: String,
        first_line: usize,
    },
    /// The text does not parse into a spec (syntax, an unknown key, a wrong type).
    #[error("{name}{}: {message}", at(*line))]
    Parse {
        name: String,
        line: Option<usize>,
        message: String,
    },
    /// A value that parses but breaks its rule.
    #[error("{name}{}: {field}: {reason}", at(*line))]
    Invalid {
        name: String,
        line: Option<usize>,
        field: String,
        reason: String,
    },
}

fn at(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

/// Reads the spec file at `path` (named in errors as `name`, e.g. the path as typed).
pub fn read_spec_file(path: &Path, name: &str) -> Result<JobSpec, SpecFileError> {
    let read_err = |e: std::io::Error| SpecFileError::Read {
        name: name.to_string(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // One byte over the limit tells a file that is too large without reading all of it.
    file.take(MAX_SPEC_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    parse_spec(name, &bytes)
}

/// Reads a spec from file contents (see the module doc for the order of the checks).
pub fn parse_spec(name: &str, bytes: &[u8]) -> Result<JobSpec, SpecFileError> {
    let name_s = || name.to_string();
    if bytes.len() > MAX_SPEC_FILE_BYTES {
        return Err(SpecFileError::TooLarge {
            name: name_s(),
            len: bytes.len(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| SpecFileError::NotText {
        name: name_s(),
        offset: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(SpecFileError::Empty { name: name_s() });
    }
    let lines = key_lines(text).map_err(|d| SpecFileError::KeyTwice {
        name: name_s(),
        line: d.line,
        key: d.path,
        first_line: d.first_line,
    })?;
    let spec: JobSpec = serde_norway::from_str(text).map_err(|e| parse_error(name, &e))?;
    spec.validate().map_err(|e| SpecFileError::Invalid {
        name: name_s(),
        line: line_of_field(&lines, &e.field),
        field: e.field,
        reason: e.reason,
    })?;
    Ok(spec)
}

/// The spec as signed: JSON of every field, defaults filled in.
pub fn to_signed_json(spec: &JobSpec) -> Vec<u8> {
    // A JobSpec is structs, strings, numbers and unit enums: serde_json cannot fail on it.
    serde_json::to_vec(spec).unwrap_or_default()
}

/// serde's message with its line taken out of the text and into the error.
fn parse_error(name: &str, e: &serde_norway::Error) -> SpecFileError {
    let mut message = e.to_string();
    let line = e.location().map(|l| {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
        l.line()
    });
    SpecFileError::Parse {
        name: name.to_string(),
        line,
        message,
    }
}

/// The line of `field` (`payload.files[0].name`), else of the nearest enclosing key the file
/// has (`payload.files[0]`, `payload.files`, `payload`).
fn line_of_field(lines: &KeyLines, field: &str) -> Option<usize> {
    let mut path = field;
    loop {
        if let Some(line) = lines.line_of(path) {
            return Some(line);
        }
        let cut = path.rfind(['.', '['])?;
        path = &path[..cut];
        if path.is_empty() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobSpec, SpecFileError> {
        parse_spec("job.yaml", text.as_bytes())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const PROCESS: &str = "\
backend: process
name: sum
payload:
  command: [/bin/sh, run.sh]
  files:
    - name: run.sh
      chunkSet: AB
    - name: data.bin
      chunkSet: CD
migration: {modes: [cold]}
result:
  file: out.txt
";

    fn process_spec() -> String {
        PROCESS
            .replace("AB", &"ab".repeat(32))
            .replace("CD", &"cd".repeat(32))
    }

    #[test]
    fn a_valid_yaml_spec_reads_and_its_signed_json_reads_back_the_same() {
        let spec = parse(&process_spec()).unwrap();
        assert_eq!(spec.payload.files.len(), 2);
        let json = to_signed_json(&spec);
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"memoryMib\":64"), "defaults filled: {text}");
        assert_eq!(parse_spec("signed", &json).unwrap(), spec);
        let minimal = parse("{\"payload\": {\"guest\": \"builtin:hello\"}}").unwrap();
        assert_eq!(minimal.vcpus, 1);
    }

    #[test]
    fn a_refused_value_names_the_file_the_line_and_the_field() {
        let text = "payload:\n  guest: builtin:hello\n\n# sized\nvcpus: 2\n\nmemoryMib: 1\n";
        assert_eq!(
            err(text),
            "job.yaml line 7: memoryMib: 1 is outside 4..=1048576"
        );
        let e = parse(text).unwrap_err();
        assert!(matches!(e, SpecFileError::Invalid { line: Some(7), .. }));
    }

    #[test]
    fn fields_in_sequences_are_named_at_their_own_item() {
        let bad_second = process_spec().replace("data.bin", "../data.bin");
        assert_eq!(
            err(&bad_second),
            "job.yaml line 8: payload.files[1].name: give a plain file name (no /, not . or ..)"
        );
        let bad_first = process_spec().replace(&"ab".repeat(32), "abc");
        assert!(
            err(&bad_first).starts_with("job.yaml line 7: payload.files[0].chunkSet: "),
            "{}",
            err(&bad_first)
        );
        let arg = format!(
            "payload: {{guest: builtin:hello}}\narguments:\n  - a\n  - \"{}\"\n",
            "x".repeat(5000)
        );
        assert!(
            err(&arg).starts_with("job.yaml line 4: arguments[1]: "),
            "{}",
            err(&arg)
        );
    }

    #[test]
    fn a_field_the_file_does_not_set_is_named_at_its_parent_or_without_a_line() {
        // migration.modes is defaulted (live, warm), which a process job refuses.
        let text = process_spec().replace("migration: {modes: [cold]}\n", "migration: {}\n");
        assert!(
            err(&text).starts_with("job.yaml line 10: migration.modes: "),
            "{}",
            err(&text)
        );
        let text = process_spec().replace("migration: {modes: [cold]}\n", "");
        assert!(
            err(&text).starts_with("job.yaml: migration.modes: "),
            "{}",
            err(&text)
        );
        assert!(
            err("payload: {}\n").starts_with("job.yaml line 1: payload: give exactly one"),
            "{}",
            err("payload: {}\n")
        );
    }

    #[test]
    fn unknown_keys_and_keys_given_twice_are_named_with_their_line() {
        let e = err("payload:\n  guest: builtin:hello\nmemmoryMib: 64\n");
        assert!(
            e.starts_with("job.yaml line 3: unknown field `memmoryMib`"),
            "{e}"
        );
        let e = err("payload:\n  guest: builtin:hello\n  kernal: {path: /k}\n");
        assert!(
            e.starts_with("job.yaml line 3: ") && e.contains("kernal"),
            "{e}"
        );
        let e = err("vcpus: 1\npayload: {guest: builtin:hello}\nvcpus: 2\n");
        assert_eq!(
            e,
            "job.yaml line 3: key vcpus is given twice (first at line 1)"
        );
        let e = err("{\"payload\": {\"guest\": \"builtin:a\", \"guest\": \"builtin:b\"}}");
        assert!(e.contains("payload.guest is given twice"), "{e}");
        let e = err("payload: {guest: builtin:hello}\nvcpus: many\n");
        assert!(
            e.starts_with("job.yaml line 2: ") && e.contains("vcpus"),
            "{e}"
        );
    }

    #[test]
    fn size_text_and_emptiness_are_checked_before_parsing() {
        let big = format!(
            "payload: {{guest: builtin:hello}}\n#{}\n",
            "x".repeat(MAX_SPEC_FILE_BYTES)
        );
        assert!(matches!(parse(&big), Err(SpecFileError::TooLarge { .. })));
        assert!(matches!(
            parse_spec("job.yaml", b"payload: \xff\n"),
            Err(SpecFileError::NotText { offset: 9, .. })
        ));
        assert!(matches!(
            parse("  \n# nothing\n"),
            Err(SpecFileError::Parse { .. }) | Err(SpecFileError::Empty { .. })
        ));
        assert!(matches!(parse(""), Err(SpecFileError::Empty { .. })));
        assert!(
            err("[1, 2]\n").starts_with("job.yaml"),
            "{}",
            err("[1, 2]\n")
        );
        assert!(err("a: [\n").starts_with("job.yaml"), "{}", err("a: [\n"));
    }

    #[test]
    fn a_file_is_read_with_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, "payload: {guest: builtin:hello}\n").unwrap();
        read_spec_file(&path, "job.yaml").unwrap();
        std::fs::write(&path, vec![b'#'; MAX_SPEC_FILE_BYTES + 10]).unwrap();
        assert!(matches!(
            read_spec_file(&path, "job.yaml"),
            Err(SpecFileError::TooLarge { len, .. }) if len == MAX_SPEC_FILE_BYTES + 1
        ));
        let e = read_spec_file(&dir.path().join("absent.yaml"), "absent.yaml").unwrap_err();
        assert!(
            e.to_string().starts_with("absent.yaml: cannot read it"),
            "{e}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Whatever the text, reading it either fails or gives a spec that validates and
        /// whose signed JSON reads back to it.
        fn holds(text: &[u8]) {
            if let Ok(spec) = parse_spec("p.yaml", text) {
                spec.validate().unwrap();
                let json = to_signed_json(&spec);
                assert_eq!(parse_spec("signed", &json).unwrap(), spec);
            }
        }

        const KEYS: &[&str] = &[
            "name",
            "backend",
            "payload",
            "guest",
            "kernel",
            "initrd",
            "command",
            "files",
            "vcpus",
            "memoryMib",
            "arguments",
            "maxRuntimeS",
            "checkpointIntervalS",
            "replicas",
            "quorum",
            "migration",
            "modes",
            "downtimeBudgetMs",
            "priority",
            "result",
            "serial",
            "file",
            "blob",
            "path",
            "chunkSet",
            "bogus",
        ];
        const VALUES: &[&str] = &[
            "1",
            "0",
            "64",
            "-1",
            "99999999999999999999",
            "builtin:hello",
            "process",
            "kvm",
            "[cold]",
            "[live, warm]",
            "true",
            "null",
            "~",
            "/bin/true",
            "[/bin/true]",
            "{}",
            "[]",
            "\"x\"",
            "&a 1",
            "*a",
            "!!str 1",
            "1.5",
            "'\\0'",
        ];

        fn doc() -> impl Strategy<Value = String> {
            let line = (0..3usize, 0..KEYS.len(), 0..VALUES.len(), any::<bool>()).prop_map(
                |(indent, k, v, nested)| {
                    let pad = "  ".repeat(indent);
                    if nested {
                        format!("{pad}{}:\n", KEYS[k])
                    } else {
                        format!("{pad}{}: {}\n", KEYS[k], VALUES[v])
                    }
                },
            );
            prop::collection::vec(line, 0..16).prop_map(|l| l.concat())
        }

        fn mutated() -> impl Strategy<Value = Vec<u8>> {
            let base = process_spec().into_bytes();
            let len = base.len();
            prop::collection::vec((0..len, any::<u8>(), 0..3u8), 1..8).prop_map(move |edits| {
                let mut b = base.clone();
                for (at, byte, op) in edits {
                    let at = at.min(b.len());
                    match op {
                        0 => b.insert(at, byte),
                        1 if at < b.len() => {
                            b.remove(at);
                        }
                        _ if at < b.len() => b[at] = byte,
                        _ => b.push(byte),
                    }
                }
                b
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn random_documents_never_panic(text in doc()) {
                holds(text.as_bytes());
            }

            #[test]
            fn mutated_specs_never_panic(bytes in mutated()) {
                holds(&bytes);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                holds(&bytes);
            }
        }
    }
}
