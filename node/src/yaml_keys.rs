//! Where each key of a YAML document stands, by its dotted path (`politeness.startHour`,
//! `politeness.days.mon.endHour`), and keys given twice in one mapping.
//!
//! serde's errors name the line of what fails to parse, but a value that parses and is then
//! refused (an hour of 25) has lost its place by then, and a key given twice is, depending on
//! where it stands, refused without a line or silently overwritten. This reads the same text
//! as an event stream (with marks) so both can be told with the file's line.
//!
//! Sequence items share their sequence's path (`mesh.bootstrap`); keys that are not plain
//! strings (a mapping used as a key) are skipped; aliases are not followed.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// The line (1-based) of every key, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLines {
    lines: HashMap<String, usize>,
}

impl KeyLines {
    /// The line of `path`'s key, if the document has it.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }
}

/// A key given twice in one mapping.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: key {path} is given twice (first at line {first_line})")]
pub struct DuplicateKey {
    pub path: String,
    pub line: usize,
    pub first_line: usize,
}

/// Reads `text`: the keys' lines, or the first key given twice. A document that is not
/// valid YAML gives what could be read before the fault (the caller's YAML parser reports
/// the fault itself).
pub fn key_lines(text: &str) -> Result<KeyLines, DuplicateKey> {
    let mut walk = Walk::default();
    let _ = Parser::new_from_str(text).load(&mut walk, false);
    match walk.duplicate {
        Some(d) => Err(d),
        None => Ok(KeyLines { lines: walk.lines }),
    }
}

enum Frame {
    /// A mapping at `path`: its keys so far, and the key whose value comes next.
    Mapping {
        path: String,
        keys: HashMap<String, usize>,
        pending: Option<String>,
    },
    /// A sequence at `path` (its items share it).
    Sequence { path: String },
}

#[derive(Default)]
struct Walk {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    duplicate: Option<DuplicateKey>,
    /// Depth of a mapping or sequence being skipped because it stands as a key.
    skipping: usize,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walk {
    /// The path a value starting now stands at, and whether it is a key (of a mapping
    /// waiting for one) rather than a value.
    fn place(&mut self) -> (String, bool) {
        match self.stack.last_mut() {
            None => (String::new(), false),
            Some(Frame::Sequence { path }) => (path.clone(), false),
            Some(Frame::Mapping { path, pending, .. }) => match pending.take() {
                Some(key) => (join(path, &key), false),
                None => (path.clone(), true),
            },
        }
    }

    fn open(&mut self, frame: impl FnOnce(String) -> Frame) {
        if self.skipping > 0 {
            self.skipping += 1;
            return;
        }
        let (path, is_key) = self.place();
        if is_key {
            // A mapping or sequence as a key: skipped, and its value with it.
            self.skipping = 1;
            return;
        }
        self.stack.push(frame(path));
    }

    fn close(&mut self) {
        if self.skipping > 0 {
            self.skipping -= 1;
            if self.skipping == 0 {
                if let Some(Frame::Mapping { pending, .. }) = self.stack.last_mut() {
                    *pending = Some(String::new());
                }
            }
            return;
        }
        self.stack.pop();
    }

    fn scalar(&mut self, value: String, line: usize) {
        if self.skipping > 0 || self.duplicate.is_some() {
            return;
        }
        let Some(Frame::Mapping {
            path,
            keys,
            pending,
        }) = self.stack.last_mut()
        else {
            return;
        };
        if pending.take().is_some() {
            return; // a scalar value
        }
        let full = join(path, &value);
        if let Some(&first_line) = keys.get(&value) {
            self.duplicate = Some(DuplicateKey {
                path: full,
                line,
                first_line,
            });
            return;
        }
        keys.insert(value.clone(), line);
        self.lines.insert(full, line);
        *pending = Some(value);
    }
}

impl Walk {
    /// An alias: a value, or a key that is not followed (nothing recorded, its value skipped).
    fn alias(&mut self) {
        if self.skipping > 0 {
            return;
        }
        if let Some(Frame::Mapping { pending, .. }) = self.stack.last_mut() {
            *pending = match pending.take() {
                Some(_) => None,
                None => Some(String::new()),
            };
        }
    }
}

impl MarkedEventReceiver for Walk {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::MappingStart(..) => self.open(|path| Frame::Mapping {
                path,
                keys: HashMap::new(),
                pending: None,
            }),
            Event::SequenceStart(..) => self.open(|path| Frame::Sequence { path }),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::Scalar(value, ..) => self.scalar(value, mark.line()),
            Event::Alias(_) => self.alias(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "nodeId: a\n\
                       api: {port: 1, host: x}\n\
                       politeness:\n  startHour: 25\n  days:\n    mon: {startHour: 1}\n\
                       mesh:\n  listen: [\"/ip4/1\", b]\n  bootstrap:\n    - x\n  mdns: true\n";

    #[test]
    fn every_key_has_its_line_in_block_and_flow_style() {
        let k = key_lines(DOC).unwrap();
        for (path, line) in [
            ("nodeId", 1),
            ("api", 2),
            ("api.port", 2),
            ("api.host", 2),
            ("politeness", 3),
            ("politeness.startHour", 4),
            ("politeness.days", 5),
            ("politeness.days.mon", 6),
            ("politeness.days.mon.startHour", 6),
            ("mesh.listen", 8),
            ("mesh.bootstrap", 9),
            ("mesh.mdns", 11),
        ] {
            assert_eq!(k.line_of(path), Some(line), "{path}");
        }
        assert_eq!(k.line_of("mesh.kadServer"), None);
        assert_eq!(k.line_of("a"), None, "values are not keys");
    }

    #[test]
    fn a_key_given_twice_is_named_with_both_lines_at_any_depth() {
        assert_eq!(
            key_lines("nodeId: a\nlogLevel: info\nnodeId: b\n").unwrap_err(),
            DuplicateKey {
                path: "nodeId".into(),
                line: 3,
                first_line: 1
            }
        );
        let err = key_lines("politeness:\n  days: {mon: {startHour: 1}, mon: {}}\n").unwrap_err();
        assert_eq!((err.path.as_str(), err.line), ("politeness.days.mon", 2));
        let err = key_lines("api:\n  port: 1\n  port: 2\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: key api.port is given twice (first at line 2)"
        );
        // The same key in two different mappings is fine.
        key_lines("a: {x: 1}\nb: {x: 1}\nc: [{x: 1}, {x: 2}]\n").unwrap();
    }

    #[test]
    fn odd_documents_do_not_confuse_it() {
        assert_eq!(key_lines("").unwrap(), KeyLines::default());
        assert_eq!(key_lines("just a scalar\n").unwrap(), KeyLines::default());
        let k = key_lines("? [a, b]\n: 1\nc: 2\n").unwrap();
        assert_eq!(k.line_of("c"), Some(3));
        // Invalid YAML: what came before the fault.
        let k = key_lines("a: 1\nb: [\n").unwrap();
        assert_eq!(k.line_of("a"), Some(1));
    }
}
