//! Where each key of a YAML document stands, by its dotted path (`politeness.startHour`,
//! `politeness.days.mon.endHour`), and keys given twice in one mapping.
//!
//! serde's errors name the line of what fails to parse, but a value that parses and is then
//! refused (an hour of 25) has lost its place by then, and a key given twice is, depending on
//! where it stands, refused without a line or silently overwritten. This reads the same text
//! as an event stream (with marks) so both can be told with the file's line.
//!
//! Sequence items share their sequence's path (`mesh.bootstrap`), and each also has its own
//! indexed path (`mesh.bootstrap[1]`, `payload.files[0].name`: the item's line, and its keys'
//! lines); keys that are not plain strings (a mapping used as a key) are skipped; aliases are
//! not followed. A shared path whose sequence has several items has the last one's line.

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
    /// A mapping at `path` (`ipath` with sequence indices): its keys so far, and the key
    /// whose value comes next.
    Mapping {
        path: String,
        ipath: String,
        keys: HashMap<String, usize>,
        pending: Option<String>,
    },
    /// A sequence at `path` (its items share it; `ipath[next]` is the next item's own).
    Sequence {
        path: String,
        ipath: String,
        next: usize,
    },
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
    /// The path (shared and indexed) a value starting now at `line` stands at, and whether
    /// it is a key (of a mapping waiting for one) rather than a value. A sequence item is
    /// counted and its indexed path noted with `line`.
    fn place(&mut self, line: usize) -> (String, String, bool) {
        match self.stack.last_mut() {
            None => (String::new(), String::new(), false),
            Some(Frame::Sequence { path, ipath, next }) => {
                let item = format!("{ipath}[{next}]");
                *next += 1;
                self.lines.insert(item.clone(), line);
                (path.clone(), item, false)
            }
            Some(Frame::Mapping {
                path,
                ipath,
                pending,
                ..
            }) => match pending.take() {
                Some(key) => (join(path, &key), join(ipath, &key), false),
                None => (path.clone(), ipath.clone(), true),
            },
        }
    }

    fn open(&mut self, line: usize, frame: impl FnOnce(String, String) -> Frame) {
        if self.skipping > 0 {
            self.skipping += 1;
            return;
        }
        let (path, ipath, is_key) = self.place(line);
        if is_key {
            // A mapping or sequence as a key: skipped, and its value with it.
            self.skipping = 1;
            return;
        }
        self.stack.push(frame(path, ipath));
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
        if let Some(Frame::Sequence { .. }) = self.stack.last() {
            self.place(line);
            return;
        }
        let Some(Frame::Mapping {
            path,
            ipath,
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
        let indexed = join(ipath, &value);
        if indexed != full {
            self.lines.insert(indexed, line);
        }
        self.lines.insert(full, line);
        *pending = Some(value);
    }
}

impl Walk {
    /// An alias: a value, or a key that is not followed (nothing recorded, its value skipped).
    fn alias(&mut self, line: usize) {
        if self.skipping > 0 {
            return;
        }
        match self.stack.last_mut() {
            Some(Frame::Mapping { pending, .. }) => {
                *pending = match pending.take() {
                    Some(_) => None,
                    None => Some(String::new()),
                };
            }
            Some(Frame::Sequence { .. }) => {
                self.place(line);
            }
            None => {}
        }
    }
}

impl MarkedEventReceiver for Walk {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::MappingStart(..) => self.open(mark.line(), |path, ipath| Frame::Mapping {
                path,
                ipath,
                keys: HashMap::new(),
                pending: None,
            }),
            Event::SequenceStart(..) => self.open(mark.line(), |path, ipath| Frame::Sequence {
                path,
                ipath,
                next: 0,
            }),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::Scalar(value, ..) => self.scalar(value, mark.line()),
            Event::Alias(_) => self.alias(mark.line()),
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
    fn sequence_items_have_their_own_indexed_lines() {
        let doc = "payload:\n  files:\n    - name: a\n      chunkSet: x\n    - {name: b,\n       chunkSet: y}\n\
                   args: [p,\n  q]\nnested: [[1], [2,\n  3]]\n";
        let k = key_lines(doc).unwrap();
        for (path, line) in [
            ("payload.files", 2),
            ("payload.files[0]", 3),
            ("payload.files[0].name", 3),
            ("payload.files[0].chunkSet", 4),
            ("payload.files[1]", 5),
            ("payload.files[1].name", 5),
            ("payload.files[1].chunkSet", 6),
            ("payload.files.chunkSet", 6),
            ("args[0]", 7),
            ("args[1]", 8),
            ("nested[1][1]", 10),
            ("nested[1][0]", 9),
        ] {
            assert_eq!(k.line_of(path), Some(line), "{path}");
        }
        assert_eq!(k.line_of("payload.files[2]"), None);
        assert_eq!(k.line_of("args[2]"), None);
        // A key given twice inside one item is still found.
        let err = key_lines("files:\n  - {name: a}\n  - {name: b, name: c}\n").unwrap_err();
        assert_eq!((err.path.as_str(), err.line), ("files.name", 3));
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
