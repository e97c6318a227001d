//! A small spanned YAML tree for configuration files people write (trust policies), built from
//! saphyr-parser events. Every node keeps its line and column so errors can point at it.
//! JSON is YAML 1.2, so the same reader takes both.
//!
//! Hostile-input rules: input size capped by the caller; nesting depth capped while building
//! (iteratively, no recursion); aliases and anchors rejected (no "billion laughs"); explicit tags
//! rejected; duplicate mapping keys reported, not silently merged.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// A position in the source, 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A node with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Where the node starts.
    pub at: Position,
    /// What it holds.
    pub kind: Kind,
}

/// Node contents. Plain scalars are resolved (null, booleans, integers); quoted ones stay text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `null`, `~` or empty.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Any other scalar, with whether it was quoted.
    Str(String, bool),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with scalar keys, in file order (duplicates rejected while building).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Text of a string scalar (quoted or plain).
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s, _) => Some(s),
            _ => None,
        }
    }

    /// A short description of the node type, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Str(..) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// A scalar rendered back to text (numbers and booleans included), for keys and versions.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.kind {
            Kind::Str(s, _) => Some(s.clone()),
            Kind::Int(i) => Some(i.to_string()),
            Kind::Bool(b) => Some(b.to_string()),
            Kind::Null => Some(String::new()),
            _ => None,
        }
    }
}

/// Why the text is not an acceptable YAML document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    /// Where.
    pub at: Position,
    /// What.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 32;

/// Most nodes (scalars, sequences, mappings) in one document: a policy has tens to hundreds.
pub const MAX_NODES: usize = 100_000;

enum Frame {
    Seq(Position, Vec<Node>),
    /// Entries, the key waiting for its value, and the keys seen (for duplicates in linear time).
    Map(Position, Vec<(Node, Node)>, Option<Node>, std::collections::HashMap<String, usize>),
}

fn resolve_plain(text: &str) -> Kind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Kind::Null,
        "true" | "True" | "TRUE" => Kind::Bool(true),
        "false" | "False" | "FALSE" => Kind::Bool(false),
        _ => match text.parse::<i64>() {
            Ok(i) if text.bytes().all(|c| c.is_ascii_digit() || c == b'-') => Kind::Int(i),
            _ => Kind::Str(text.to_owned(), false),
        },
    }
}

/// Parses one YAML (or JSON) document into a spanned tree. Structural errors stop at the first
/// (`Err`); duplicate keys do not stop parsing: they come back beside the tree, every one of them,
/// so a caller can report them together with its own checks. Lookups see the first occurrence.
pub fn parse(text: &str) -> Result<(Node, Vec<YamlError>), Vec<YamlError>> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let mut nodes = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| {
            let at = Position { line: e.marker().line(), column: e.marker().col() + 1 };
            vec![YamlError { at, message: format!("not valid YAML: {}", e.info()) }]
        })?;
        let at = Position { line: span.start.line(), column: span.start.col() + 1 };
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(vec![YamlError { at, message: "more than 100000 values: a trust policy is far smaller — is this the right file?".into() }]);
        }
        builder.event(event, at).map_err(|e| vec![e])?;
    }
    match builder.root {
        Some(root) => Ok((root, builder.duplicates)),
        None => Err(vec![YamlError { at: Position { line: 1, column: 1 }, message: "the file is empty".into() }]),
    }
}

/// The tree under construction, one parser event at a time.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    duplicates: Vec<YamlError>,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, at: Position) -> Result<(), YamlError> {
        let fail = |message: &str| Err(YamlError { at, message: message.to_owned() });
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => return Ok(()),
            Event::DocumentStart(_) => {
                self.documents += 1;
                return if self.documents > 1 { fail("more than one YAML document: put the whole policy in one document") } else { Ok(()) };
            }
            Event::Alias(_) => return fail("aliases (*name) are not supported: write the value out"),
            Event::Scalar(value, style, anchor, tag) => {
                if anchor != 0 {
                    return fail("anchors (&name) are not supported: write the value out");
                }
                if tag.is_some() {
                    return fail("explicit tags (!tag) are not supported");
                }
                let kind = match style {
                    ScalarStyle::Plain => resolve_plain(&value),
                    _ => Kind::Str(value.into_owned(), true),
                };
                Node { at, kind }
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) if anchor != 0 || tag.is_some() => {
                return fail("anchors and tags are not supported: write the value out");
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => return fail("nested too deeply"),
            Event::SequenceStart(..) => {
                self.stack.push(Frame::Seq(at, Vec::new()));
                return Ok(());
            }
            Event::MappingStart(..) => {
                self.stack.push(Frame::Map(at, Vec::new(), None, std::collections::HashMap::new()));
                return Ok(());
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq(start, items)) => Node { at: start, kind: Kind::Seq(items) },
                _ => return fail("unbalanced sequence"),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map(start, entries, None, _)) => Node { at: start, kind: Kind::Map(entries) },
                _ => return fail("unbalanced mapping"),
            },
        };
        self.attach(node)
    }

    /// Attaches a finished node to its parent (or makes it the root).
    fn attach(&mut self, node: Node) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending, seen)) => match pending.take() {
                None => {
                    if matches!(node.kind, Kind::Seq(_) | Kind::Map(_)) {
                        return Err(YamlError { at: node.at, message: "mapping keys must be scalars".into() });
                    }
                    let text = node.scalar_text().unwrap_or_default();
                    if let Some(first_line) = seen.get(&text) {
                        self.duplicates.push(YamlError {
                            at: node.at,
                            message: format!("duplicate key {text:?} (first at line {first_line}): a later value would silently replace the earlier one"),
                        });
                    } else {
                        seen.insert(text, node.at.line);
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_with_positions() {
        let (node, _) = parse("a: 1\nb:\n  - x\n  - 'true'\nc: true\n").unwrap();
        let Kind::Map(entries) = node.kind else { panic!() };
        assert_eq!(entries[0].1.kind, Kind::Int(1));
        assert_eq!(entries[1].1.at.line, 3);
        let Kind::Seq(items) = &entries[1].1.kind else { panic!() };
        assert_eq!(items[1].kind, Kind::Str("true".into(), true));
        assert_eq!(entries[2].1.kind, Kind::Bool(true));
        let (nested, _) = parse("ab: 1\ncd:\n  - x\n").unwrap();
        let Kind::Map(e) = nested.kind else { panic!() };
        let Kind::Seq(items) = &e[1].1.kind else { panic!() };
        assert_eq!(items[0].at, Position { line: 3, column: 5 }, "1-based line and column");
        let (json, _) = parse(r#"{"a": [1, "x", null], "b": {"c": false}}"#).unwrap();
        assert!(matches!(json.kind, Kind::Map(ref e) if e.len() == 2));
    }

    #[test]
    fn hostile_yaml_is_rejected() {
        assert!(parse("a: &x [1]\nb: *x\n").is_err());
        assert!(parse(&"[".repeat(10_000)).is_err());
        assert!(parse("a: !!str 1\n").is_err());
        let (_, dup) = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(dup[0].at.line, 3);
        assert!(dup[0].message.contains("duplicate key"));
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("").is_err());
        assert!(parse("a: [1, 2\n").is_err());
    }
}
