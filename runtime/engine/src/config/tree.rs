//! YAML text → a tree that remembers where every node was written.
//!
//! Built from yaml-rust2's event parser rather than its `Yaml` loader so that every key and
//! value keeps its line and column, duplicate keys can be rejected, and aliases can be
//! expanded with a bound on the size they expand to.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// A place in the file, both 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn of(mark: &Marker) -> Pos {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: mark.line().max(1),
            column: mark.col() + 1,
        }
    }
}

/// A YAML node and where it starts.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique.
    Map(Vec<(Key, Node)>),
}

/// A scalar as resolved by the YAML 1.2 core schema.
#[derive(Clone, Debug)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    /// Kept as written; converted (and checked for being finite) with the rest.
    Float(String),
    /// A string: quoted, block, `!!str`, or a plain scalar that is not a number, bool or null.
    /// Only these are interpolated.
    Str(String),
}

/// A mapping key: always a string.
#[derive(Clone, Debug)]
pub(crate) struct Key {
    pub text: String,
    pub pos: Pos,
}

/// A problem found while reading the YAML itself.
#[derive(Debug)]
pub(crate) struct TreeError {
    pub pos: Pos,
    /// Dotted path of the offending key, `""` when it is about the file as a whole.
    pub path: String,
    pub message: String,
}

/// Upper bound on nodes, counting each alias expansion in full ("billion laughs").
const MAX_NODES: usize = 100_000;

/// Parse one YAML document. An empty file (or one holding only comments) gives `Ok(None)`.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, TreeError> {
    let mut builder = Builder::default();
    let result = Parser::new_from_str(text).load(&mut builder, true);
    // The builder stops at its first error, which comes from earlier in the file than any
    // syntax error the parser went on to find.
    if let Some(e) = builder.error {
        return Err(e);
    }
    if let Err(e) = result {
        return Err(TreeError {
            pos: Pos::of(e.marker()),
            path: String::new(),
            message: format!("YAML syntax error: {}", e.info()),
        });
    }
    Ok(builder.root)
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        path: String,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        path: String,
        entries: Vec<(Key, Node)>,
        pending: Option<Key>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    error: Option<TreeError>,
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.event(event, mark) {
            self.error = Some(e);
        }
    }
}

impl Builder {
    /// The path the next node will have.
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { path, items, .. }) => format!("{path}[{}]", items.len()),
            Some(Frame::Map {
                path,
                pending: Some(key),
                ..
            }) => child(path, &key.text),
            // A key being read: report it under its map.
            Some(Frame::Map { path, .. }) => path.clone(),
        }
    }

    fn event(&mut self, event: Event, mark: Marker) -> Result<(), TreeError> {
        let pos = Pos::of(&mark);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return fail(
                        pos,
                        String::new(),
                        "a pipeline file holds one YAML document; remove the second `---` \
                         or put the second pipeline in its own file",
                    );
                }
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                let scalar = self.resolve(text, style, tag.as_ref(), pos)?;
                self.finish(
                    Node {
                        pos,
                        kind: Kind::Scalar(scalar),
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_collection_tag(tag.as_ref(), "seq", pos)?;
                let path = self.next_path();
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    path,
                    items: Vec::new(),
                });
                Ok(())
            }
            Event::MappingStart(anchor, tag) => {
                self.check_collection_tag(tag.as_ref(), "map", pos)?;
                let path = self.next_path();
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    path,
                    entries: Vec::new(),
                    pending: None,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    pos, anchor, items, ..
                }) => self.finish(
                    Node {
                        pos,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => {
                    // yaml-rust2 marks a block map's start at its first `:`; the map starts
                    // at its first key. (A flow map's `{` comes before its first key.)
                    let pos = match entries.first() {
                        Some((key, _))
                            if (key.pos.line, key.pos.column) < (pos.line, pos.column) =>
                        {
                            key.pos
                        }
                        _ => pos,
                    };
                    self.finish(
                        Node {
                            pos,
                            kind: Kind::Map(entries),
                        },
                        anchor,
                    )
                }
                None => Ok(()),
            },
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id) else {
                    return fail(
                        pos,
                        self.next_path(),
                        "this alias refers to an anchor that encloses it",
                    );
                };
                let mut node = node.clone();
                node.pos = pos;
                self.finish(node, 0)
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
        }
    }

    fn check_collection_tag(
        &self,
        tag: Option<&Tag>,
        want: &str,
        pos: Pos,
    ) -> Result<(), TreeError> {
        match tag {
            None => Ok(()),
            Some(t) if t.handle == "tag:yaml.org,2002:" && t.suffix == want => Ok(()),
            Some(t) => fail(
                pos,
                self.next_path(),
                format!("unsupported YAML tag `{}{}`", t.handle, t.suffix),
            ),
        }
    }

    fn resolve(
        &self,
        text: String,
        style: TScalarStyle,
        tag: Option<&Tag>,
        pos: Pos,
    ) -> Result<Scalar, TreeError> {
        let Some(tag) = tag else {
            if style != TScalarStyle::Plain {
                return Ok(Scalar::Str(text));
            }
            return Ok(match Yaml::from_str(&text) {
                Yaml::Null => Scalar::Null,
                Yaml::Boolean(b) => Scalar::Bool(b),
                Yaml::Integer(i) => Scalar::Int(i),
                Yaml::Real(r) => Scalar::Float(r),
                _ => Scalar::Str(text),
            });
        };
        let bad = |what: &str| fail(pos, self.next_path(), format!("`{text}` is not {what}"));
        if tag.handle != "tag:yaml.org,2002:" {
            return fail(
                pos,
                self.next_path(),
                format!("unsupported YAML tag `{}{}`", tag.handle, tag.suffix),
            );
        }
        match tag.suffix.as_str() {
            "str" => Ok(Scalar::Str(text)),
            "null" => match text.as_str() {
                "" | "~" | "null" | "Null" | "NULL" => Ok(Scalar::Null),
                _ => bad("null"),
            },
            "bool" => match Yaml::from_str(&text) {
                Yaml::Boolean(b) => Ok(Scalar::Bool(b)),
                _ => bad("a boolean"),
            },
            "int" => match Yaml::from_str(&text) {
                Yaml::Integer(i) => Ok(Scalar::Int(i)),
                _ => bad("an integer"),
            },
            "float" => match Yaml::from_str(&text) {
                Yaml::Integer(_) | Yaml::Real(_) => Ok(Scalar::Float(text)),
                _ => bad("a number"),
            },
            other => fail(
                pos,
                self.next_path(),
                format!("unsupported YAML tag `!!{other}`"),
            ),
        }
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), TreeError> {
        self.nodes += count(&node);
        if self.nodes > MAX_NODES {
            return fail(
                node.pos,
                self.next_path(),
                format!("the file expands to more than {MAX_NODES} values (aliases of aliases?)"),
            );
        }
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let path = self.next_path();
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                entries, pending, ..
            }) => {
                if let Some(key) = pending.take() {
                    entries.push((key, node));
                    return Ok(());
                }
                let text = match node.kind {
                    Kind::Scalar(Scalar::Str(text)) => text,
                    Kind::Scalar(Scalar::Null) => {
                        return fail(node.pos, path, "a map key is missing or empty")
                    }
                    Kind::Scalar(Scalar::Bool(_) | Scalar::Int(_) | Scalar::Float(_)) => {
                        return fail(
                            node.pos,
                            path,
                            "map keys must be strings; quote this key if it is meant as text",
                        )
                    }
                    Kind::Seq(_) | Kind::Map(_) => {
                        return fail(
                            node.pos,
                            path,
                            "map keys must be strings, not lists or maps",
                        )
                    }
                };
                if let Some((first, _)) = entries.iter().find(|(k, _)| k.text == text) {
                    let message = format!(
                        "duplicate key `{text}` (first written at line {}, column {})",
                        first.pos.line, first.pos.column
                    );
                    return fail(node.pos, child(&path, &text), message);
                }
                *pending = Some(Key {
                    text,
                    pos: node.pos,
                });
                Ok(())
            }
        }
    }
}

fn fail<T>(pos: Pos, path: String, message: impl Into<String>) -> Result<T, TreeError> {
    Err(TreeError {
        pos,
        path,
        message: message.into(),
    })
}

fn count(node: &Node) -> usize {
    1 + match &node.kind {
        Kind::Scalar(_) => 0,
        Kind::Seq(items) => items.iter().map(count).sum(),
        Kind::Map(entries) => entries.iter().map(|(_, v)| 1 + count(v)).sum(),
    }
}

/// `parent.key`, or `key` at the top.
pub(crate) fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let root = parse("a: 1\nb:\n  c: [x, y]\n").unwrap().unwrap();
        let Kind::Map(entries) = root.kind else {
            panic!()
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, column: 4 });
        let Kind::Map(inner) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(inner[0].0.pos, Pos { line: 3, column: 3 });
        let Kind::Seq(items) = &inner[0].1.kind else {
            panic!()
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 3,
                column: 10
            }
        );
    }

    #[test]
    fn scalars_resolve_by_the_core_schema() {
        let root = parse("[1, '1', 1.5, true, ~, x, !!str 2, 0x10]")
            .unwrap()
            .unwrap();
        let Kind::Seq(items) = root.kind else {
            panic!()
        };
        let got: Vec<String> = items
            .iter()
            .map(|n| match &n.kind {
                Kind::Scalar(s) => format!("{s:?}"),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            got,
            [
                "Int(1)",
                "Str(\"1\")",
                "Float(\"1.5\")",
                "Bool(true)",
                "Null",
                "Str(\"x\")",
                "Str(\"2\")",
                "Int(16)"
            ]
        );
    }

    #[test]
    fn aliases_expand_and_explosions_are_stopped() {
        let root = parse("a: &x {b: 1}\nc: *x\n").unwrap().unwrap();
        let Kind::Map(entries) = root.kind else {
            panic!()
        };
        assert!(matches!(&entries[1].1.kind, Kind::Map(m) if m[0].0.text == "b"));
        assert_eq!(entries[1].1.pos.line, 2);

        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&text).unwrap_err().message.contains("more than"));
    }

    #[test]
    fn maps_start_at_their_first_key_or_brace() {
        let root = parse("l:\n  - a: 1\n    b: 2\n  - { c: 3 }\n  -\n    d: 4\n")
            .unwrap()
            .unwrap();
        let Kind::Map(entries) = root.kind else {
            panic!()
        };
        assert_eq!(root.pos, Pos { line: 1, column: 1 });
        let Kind::Seq(items) = &entries[0].1.kind else {
            panic!()
        };
        let at: Vec<(usize, usize)> = items.iter().map(|n| (n.pos.line, n.pos.column)).collect();
        assert_eq!(at, [(2, 5), (4, 5), (6, 5)]);
    }

    #[test]
    fn empty_files_have_no_root() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }
}
