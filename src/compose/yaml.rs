//! The YAML of compose files as a tree whose nodes keep their line, built from saphyr-parser's
//! events: anchors and aliases resolved, merge keys (`<<: *defaults`, or a list of them)
//! applied as YAML 1.1's merge type says (explicit keys win; among merged maps, the earlier
//! wins), a key given twice refused. Only the first document of a file counts, as in Compose.
//! A file is untrusted input: saphyr-parser refuses deep nesting itself ("recursion limit
//! exceeded"), and aliases may expand the tree to [`MAX_NODES`] nodes at most (a few nested
//! aliases otherwise make billions).

use saphyr_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;

/// How many nodes a document may hold, aliases expanded.
pub const MAX_NODES: usize = 1_000_000;

/// A node and the line (1-based) it starts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar's text, and whether it was plain (unquoted: `5` may be a number, `"5"` is text).
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A mapping's entry: its key (a scalar) and the key's line.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub line: usize,
    pub value: Node,
}

impl Node {
    /// A plain `null`, `~` or nothing at all.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s, true) if s.is_empty() || s == "~" || s == "null" || s == "Null" || s == "NULL")
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(es) => es.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }
}

/// Parses `text`; errors say the line and column.
pub fn parse(text: &str) -> Result<Node, String> {
    let mut b = Builder::default();
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| e.to_string())?;
        let line = span.start.line();
        match ev {
            Event::StreamStart | Event::Nothing | Event::DocumentStart(_) => {}
            Event::DocumentEnd | Event::StreamEnd => {
                if b.done.is_some() || ev == Event::StreamEnd {
                    break;
                }
            }
            Event::Alias(id) => {
                let (n, size) = b.anchors.get(&id).cloned().ok_or_else(|| {
                    format!("line {line}: an alias to an anchor not defined before it")
                })?;
                b.count(line, size)?;
                b.push(n)?;
            }
            Event::Scalar(s, style, anchor, _) => {
                let n = Node {
                    line,
                    value: Value::Scalar(s.into_owned(), style == ScalarStyle::Plain),
                };
                b.count(line, 1)?;
                if anchor > 0 {
                    b.anchors.insert(anchor, (n.clone(), 1));
                }
                b.push(n)?;
            }
            Event::SequenceStart(anchor, _) => b.open(line, anchor, Value::Seq(Vec::new()))?,
            Event::MappingStart(anchor, _) => b.open(line, anchor, Value::Map(Vec::new()))?,
            Event::SequenceEnd | Event::MappingEnd => {
                let (anchor, mut n) = b.stack.pop().expect("the parser balances its events");
                b.pending_key.pop();
                let first = b.opened.pop().expect("one count for each open container");
                if let Value::Map(entries) = &mut n.value {
                    *entries = merge_keys(std::mem::take(entries))?;
                }
                if anchor > 0 {
                    b.anchors.insert(anchor, (n.clone(), b.nodes - first));
                }
                b.push(n)?;
            }
        }
    }
    Ok(b.done.unwrap_or(Node {
        line: 1,
        value: Value::Map(Vec::new()),
    }))
}

#[derive(Default)]
struct Builder {
    /// Open sequences and mappings (with their anchor), and a mapping's key waiting for its value.
    stack: Vec<(usize, Node)>,
    pending_key: Vec<Option<(String, usize)>>,
    /// The node count when each open container began.
    opened: Vec<usize>,
    /// Anchored nodes, with how many nodes each stands for.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes so far, aliases expanded.
    nodes: usize,
    done: Option<Node>,
}

impl Builder {
    fn open(&mut self, line: usize, anchor: usize, value: Value) -> Result<(), String> {
        self.opened.push(self.nodes);
        self.count(line, 1)?;
        self.stack.push((anchor, Node { line, value }));
        self.pending_key.push(None);
        Ok(())
    }

    /// Counts `n` more nodes; too many is an error.
    fn count(&mut self, line: usize, n: usize) -> Result<(), String> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(format!(
                "line {line}: the document holds more than {MAX_NODES} values once its aliases are expanded"
            ));
        }
        Ok(())
    }

    /// Adds a finished node to the open container (as a key or a value), or ends the document.
    fn push(&mut self, n: Node) -> Result<(), String> {
        let Some((_, top)) = self.stack.last_mut() else {
            self.done.get_or_insert(n);
            return Ok(());
        };
        match &mut top.value {
            Value::Seq(items) => items.push(n),
            Value::Map(entries) => {
                let slot = self
                    .pending_key
                    .last_mut()
                    .expect("a key slot for each open container");
                match slot.take() {
                    None => match n.value {
                        Value::Scalar(k, _) => *slot = Some((k, n.line)),
                        _ => {
                            return Err(format!("line {}: a mapping key must be a scalar", n.line))
                        }
                    },
                    Some((key, line)) => {
                        if key != "<<" && entries.iter().any(|e| e.key == key) {
                            return Err(format!(
                                "line {line}: mapping key {key:?} already defined"
                            ));
                        }
                        entries.push(Entry {
                            key,
                            line,
                            value: n,
                        });
                    }
                }
            }
            Value::Scalar(..) => unreachable!("scalars hold no children"),
        }
        Ok(())
    }
}

/// Applies `<<` entries: their maps' keys come after the explicit ones, unless given explicitly.
fn merge_keys(entries: Vec<Entry>) -> Result<Vec<Entry>, String> {
    if !entries.iter().any(|e| e.key == "<<") {
        return Ok(entries);
    }
    let (merges, mut out): (Vec<Entry>, Vec<Entry>) =
        entries.into_iter().partition(|e| e.key == "<<");
    for m in merges {
        let sources: Vec<Node> = match m.value.value {
            Value::Map(_) => vec![m.value],
            Value::Seq(items) => items,
            Value::Scalar(..) => {
                return Err(format!(
                    "line {}: a merge key (<<) takes a mapping or a list of mappings",
                    m.line
                ))
            }
        };
        for src in sources {
            let Value::Map(es) = src.value else {
                return Err(format!(
                    "line {}: a merge key (<<) takes a mapping or a list of mappings",
                    src.line
                ));
            };
            for e in es {
                if !out.iter().any(|o| o.key == e.key) {
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> &str {
        match &n.value {
            Value::Scalar(s, _) => s,
            v => panic!("not a scalar: {v:?}"),
        }
    }

    #[test]
    fn lines_anchors_and_merge_keys() {
        let doc = "x-defaults: &d\n  image: base\n  restart: always\nservices:\n  web:\n    <<: *d\n    restart: \"no\"\n    ports:\n      - 4000:80\n";
        let n = parse(doc).unwrap();
        let web = n.get("services").unwrap().get("web").unwrap();
        assert_eq!(web.line, 6);
        assert_eq!(scalar(web.get("image").unwrap()), "base");
        let restart = web.get("restart").unwrap();
        assert_eq!(restart.value, Value::Scalar("no".into(), false));
        let Value::Map(es) = &web.value else { panic!() };
        let keys: Vec<&str> = es.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["restart", "ports", "image"]);
        let Value::Seq(ports) = &web.get("ports").unwrap().value else {
            panic!()
        };
        assert_eq!(ports[0].line, 9);
        assert_eq!(ports[0].value, Value::Scalar("4000:80".into(), true));
    }

    #[test]
    fn a_list_of_merges_keeps_the_first_and_errors_name_the_line() {
        let n = parse("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n").unwrap();
        let c = n.get("c").unwrap();
        assert_eq!(scalar(c.get("x").unwrap()), "1");
        assert_eq!(scalar(c.get("y").unwrap()), "2");
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("\"a\" already defined"),
            "{e}"
        );
        let e = parse("a: [1, 2\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        assert!(parse("").unwrap().get("services").is_none());
        // Untrusted input: deep nesting and alias bombs are refused, not followed.
        let deep = format!("a: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse(&deep).unwrap_err();
        assert!(e.contains("recursion limit"), "{e}");
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!(
                "b{i}: &b{i} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            ));
        }
        assert!(parse(&bomb)
            .unwrap_err()
            .contains("more than 1000000 values"));
        assert!(parse("a:\n").unwrap().get("a").unwrap().is_null());
    }
}
