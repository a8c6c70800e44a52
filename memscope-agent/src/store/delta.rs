//! Change detection for `emit = "changes"`: whether an entity's record moved beyond its kind's
//! hysteresis since the body last *sent*, and the `delta` record that brings a reader's copy up to
//! date.
//!
//! - A `_bytes` field (at any depth) has moved when it differs from the value last sent by at least
//!   `min_change.bytes` and by at least `min_change.percent` % of that value. The reference is the
//!   last value sent, not the last value seen, so a slow drift is sent once it adds up.
//! - Any other field has moved when its value differs, except a kind's volatile fields
//!   ([`volatile`]), which never make a record change on their own.
//! - An entity that moved is sent as a `delta` record ([`entity_delta`]): a JSON merge patch
//!   (RFC 7386) of the body the reader holds, carrying the entity's identity fields ([`IDENTITY`]),
//!   the fields that moved and the volatile fields that differ. A `_bytes` field within the
//!   hysteresis is left out and keeps, as its reference, the value the reader holds. Objects merge
//!   member by member, arrays and scalars replace, and a member the new body lacks is `null`
//!   (absent and `null` mean the same in every record).
//! - The `agent` record's delta ([`delta_body_without`]) carries every field that differs, except
//!   the members only keyframes carry.
//!
//! Bodies are the agent's own compact JSON (the fields without the outer braces, see
//! [`crate::records::Record`]); they are compared by a small scanner over the text, with no
//! intermediate `serde_json::Value`. A body the scanner cannot read (which the agent never writes)
//! counts as changed and is sent whole.

use crate::config::MinChange;

/// Top-level fields that identify an entity within its kind (a process's `pid`, an object's `id`, a
/// tmpfs's `dev`, a memfd's `dev` and `inode`, a SysV segment's `shmid`, a cgroup's `path`): every
/// `delta` record carries those its kind has, so a reader knows which entity it patches.
pub const IDENTITY: [&str; 6] = ["pid", "id", "dev", "inode", "shmid", "path"];

/// Fields of `kind` (at any depth) that change too often to be worth a record of their own: a
/// process's `state` (running or sleeping at the moment of the read) and `threads`, an object's
/// `mappings` (count of mappings, moved by every anonymous mmap), a cgroup's `pressure` (PSI
/// averages), the dirty and writeback page counts of a cgroup and of `meminfo` (I/O state that
/// every write and flush moves, not who holds memory), and a tmpfs's counts of files, directories
/// and inodes. They are sent with the record when it is sent for another reason, and in every
/// keyframe.
pub fn volatile(kind: &str) -> &'static [&'static str] {
    match kind {
        "process" => &["state", "threads"],
        "object" => &["mappings"],
        "cgroup" => &["pressure", "file_dirty_bytes"],
        "meminfo" => &["Dirty_bytes", "Writeback_bytes", "WritebackTmp_bytes"],
        "tmpfs" => &["files", "dirs", "inodes_used", "walk_errors"],
        _ => &[],
    }
}

/// How far a value moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Moved {
    /// Not at all.
    Same,
    /// Within the hysteresis, or only volatile fields.
    Within,
    /// Enough to send.
    Beyond,
}

/// How `kind`'s records are compared.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub min_change: MinChange,
    pub volatile: &'static [&'static str],
}

impl Rule {
    pub fn of(kind: &str, min_change: MinChange) -> Rule {
        Rule {
            min_change,
            volatile: volatile(kind),
        }
    }
}

/// Compares a body with the one last sent. `Moved::Beyond` means: send it, as
/// [`entity_delta`].
pub fn moved(sent: &str, new: &str, rule: &Rule) -> Moved {
    if sent == new {
        return Moved::Same;
    }
    let (Some(old), Some(new)) = (members(sent), members(new)) else {
        return Moved::Beyond;
    };
    let mut m = Moved::Same;
    for_each_pair(&old, &new, |key, o, n| {
        let v = rule.volatile.contains(&unquote(key));
        let moved = match (o, n) {
            (Some(o), Some(n)) => compare(o, n, key, rule.min_change, v, rule.volatile),
            _ if v => Moved::Within,
            _ => Moved::Beyond,
        };
        m = m.max(moved);
    });
    m
}

/// A top-level member a delta leaves out unless it moved with its `quiet` members (at any depth)
/// ignored; `quiet: None`: always left out.
pub type Skip<'a> = (&'a str, Option<&'a [&'a str]>);

/// The body of the `delta` record that turns `sent` into `new` exactly (the `agent` record):
/// `"delta":true`, the identity fields, then every member that differs (objects as nested
/// patches), leaving out the members named in `skip` (the counters only keyframes carry, unless
/// something other than a count moved). `None` when a body cannot be read; the caller then sends
/// `new` whole.
pub fn delta_body_without(
    sent: &str,
    new: &str,
    skip: &[Skip<'_>],
    out: &mut String,
) -> Option<()> {
    let old = members(sent)?;
    let new_members = members(new)?;
    open_delta(&new_members, out);
    for_each_pair(&old, &new_members, |key, o, n| {
        if IDENTITY.contains(&unquote(key)) {
            return;
        }
        if let Some((_, quiet)) = skip.iter().find(|(k, _)| *k == unquote(key)) {
            let exact = MinChange::default();
            let moved = match (quiet, o, n) {
                (None, _, _) => false,
                (Some(q), Some(o), Some(n)) => compare(o, n, key, exact, false, q) == Moved::Beyond,
                (Some(_), _, _) => true,
            };
            if !moved {
                return;
            }
        }
        patch_member(key, o, n, out);
    });
    Some(())
}

/// The start of every `delta` body: `"delta":true`, then the identity fields of `new`.
fn open_delta(new: &[(&str, Node<'_>)], out: &mut String) {
    out.push_str("\"delta\":true");
    for (k, n) in new {
        if IDENTITY.contains(&unquote(k)) {
            out.push(',');
            out.push_str(k);
            out.push(':');
            out.push_str(n.text());
        }
    }
}

/// The `delta` body of an entity that moved (see [`moved`]) and, in `held`, the body a reader
/// holds after applying it: the identity fields, every member that moved past the hysteresis (any
/// change of a field that is not `_bytes`), and the volatile members that differ. A `_bytes` field
/// within the hysteresis keeps its last sent value, so its reference stays what the reader has.
/// `None` when a body cannot be read; the caller then sends `new` whole.
pub fn entity_delta(
    sent: &str,
    new: &str,
    rule: &Rule,
    delta: &mut String,
    held: &mut String,
) -> Option<()> {
    let old = members(sent)?;
    let new_members = members(new)?;
    open_delta(&new_members, delta);
    merge_members(&old, &new_members, rule, true, delta, held);
    Some(())
}

/// Writes into `delta` (each with a leading comma) the members of `new` to send against `old`,
/// and into `held` (comma-separated) the members the reader holds afterwards. `top`: the record's
/// own members (identity fields are already in `delta`; volatile names apply there).
fn merge_members(
    old: &[(&str, Node<'_>)],
    new: &[(&str, Node<'_>)],
    rule: &Rule,
    top: bool,
    delta: &mut String,
    held: &mut String,
) {
    let mut first = true;
    let mut hold = |held: &mut String, key: &str, text: &str| {
        if !first {
            held.push(',');
        }
        first = false;
        held.push_str(key);
        held.push(':');
        held.push_str(text);
    };
    for_each_pair(old, new, |key, o, n| {
        let name = unquote(key);
        let volatile = rule.volatile.contains(&name);
        match (o, n) {
            (Some(o), Some(n)) if o.text() == n.text() || (top && IDENTITY.contains(&name)) => {
                hold(held, key, n.text());
            }
            (Some(Node::Object(_, om)), Some(Node::Object(_, nm))) if !volatile => {
                let (mut d, mut h) = (String::new(), String::new());
                merge_members(om, nm, rule, false, &mut d, &mut h);
                if !d.is_empty() {
                    delta.push(',');
                    delta.push_str(key);
                    delta.push_str(":{");
                    delta.push_str(&d[1..]);
                    delta.push('}');
                }
                hold(held, key, &format!("{{{h}}}"));
            }
            (Some(o), Some(n)) => {
                if volatile || compare(o, n, key, rule.min_change, false, &[]) == Moved::Beyond {
                    delta.push(',');
                    delta.push_str(key);
                    delta.push(':');
                    delta.push_str(n.text());
                    hold(held, key, n.text());
                } else {
                    hold(held, key, o.text());
                }
            }
            (None, Some(n)) => {
                delta.push(',');
                delta.push_str(key);
                delta.push(':');
                delta.push_str(n.text());
                hold(held, key, n.text());
            }
            (Some(_), None) => {
                delta.push(',');
                delta.push_str(key);
                delta.push_str(":null");
            }
            (None, None) => {}
        }
    });
}

/// Writes `,"key":patch` when `o` and `n` differ.
fn patch_member(key: &str, o: Option<&Node<'_>>, n: Option<&Node<'_>>, out: &mut String) {
    match (o, n) {
        (Some(o), Some(n)) if o.text() == n.text() => {}
        (Some(Node::Object(_, om)), Some(Node::Object(_, nm))) => {
            out.push(',');
            out.push_str(key);
            out.push_str(":{");
            let start = out.len();
            for_each_pair(om, nm, |k, o, n| patch_member(k, o, n, out));
            // Members were written with a leading comma each; drop the first one.
            if out.len() > start {
                out.remove(start);
            }
            out.push('}');
        }
        (_, Some(n)) => {
            out.push(',');
            out.push_str(key);
            out.push(':');
            out.push_str(n.text());
        }
        (Some(_), None) => {
            out.push(',');
            out.push_str(key);
            out.push_str(":null");
        }
        (None, None) => {}
    }
}

/// Calls `f` for every key of `new` (with the old member, if any) and then for every key only in
/// `old`. Members usually come in the same order (one serializer wrote both), so the search starts
/// where the last one matched.
fn for_each_pair<'a>(
    old: &[(&'a str, Node<'a>)],
    new: &[(&'a str, Node<'a>)],
    mut f: impl FnMut(&'a str, Option<&Node<'a>>, Option<&Node<'a>>),
) {
    let mut seen = vec![false; old.len()];
    let mut hint = 0;
    for (k, n) in new {
        let found = (hint..old.len())
            .chain(0..hint)
            .find(|&i| old[i].0 == *k && !seen[i]);
        match found {
            Some(i) => {
                seen[i] = true;
                hint = i + 1;
                f(k, Some(&old[i].1), Some(n));
            }
            None => f(k, None, Some(n)),
        }
    }
    for (i, (k, o)) in old.iter().enumerate() {
        if !seen[i] {
            f(k, Some(o), None);
        }
    }
}

/// How far `new` moved from `old` (the value of `key`); members named in `quiet`, at any depth,
/// count as volatile.
fn compare(
    old: &Node<'_>,
    new: &Node<'_>,
    key: &str,
    th: MinChange,
    volatile: bool,
    quiet: &[&str],
) -> Moved {
    if old.text() == new.text() {
        return Moved::Same;
    }
    if volatile || quiet.contains(&unquote(key)) {
        return Moved::Within;
    }
    match (old, new) {
        (Node::Scalar(o), Node::Scalar(n)) => {
            if unquote(key).ends_with("_bytes")
                && let (Ok(o), Ok(n)) = (o.parse::<i128>(), n.parse::<i128>())
                && within(o, n, th)
            {
                Moved::Within
            } else {
                Moved::Beyond
            }
        }
        (Node::Object(_, om), Node::Object(_, nm)) => {
            let mut m = Moved::Same;
            for_each_pair(om, nm, |k, o, n| {
                m = m.max(match (o, n) {
                    (Some(o), Some(n)) => compare(o, n, k, th, false, quiet),
                    _ => Moved::Beyond,
                });
            });
            m
        }
        (Node::Array(_, oa), Node::Array(_, na)) if oa.len() == na.len() => oa
            .iter()
            .zip(na)
            .map(|(o, n)| compare(o, n, key, th, false, quiet))
            .max()
            .unwrap_or(Moved::Same),
        _ => Moved::Beyond,
    }
}

/// Whether `new` is within the hysteresis of `old`: it moved by less than `bytes`, or by less than
/// `percent` % of `old`.
fn within(old: i128, new: i128, th: MinChange) -> bool {
    let d = (new - old).unsigned_abs();
    d < u128::from(th.bytes.0) || (d as f64) < th.percent / 100.0 * old.unsigned_abs() as f64
}

/// `"key"` → `key` (keys the agent writes need no unescaping to be compared with plain names).
fn unquote(key: &str) -> &str {
    key.strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(key)
}

/// A JSON value as slices of the text it was read from.
#[derive(Debug)]
enum Node<'a> {
    Scalar(&'a str),
    Array(&'a str, Vec<Node<'a>>),
    /// Members as (quoted key, value).
    Object(&'a str, Vec<(&'a str, Node<'a>)>),
}

impl<'a> Node<'a> {
    fn text(&self) -> &'a str {
        match self {
            Node::Scalar(t) | Node::Array(t, _) | Node::Object(t, _) => t,
        }
    }
}

/// The members of a body (an object's text without its braces).
fn members(body: &str) -> Option<Vec<(&str, Node<'_>)>> {
    let mut p = Parser { s: body, i: 0 };
    let m = p.members(None)?;
    p.ws();
    (p.i == body.len()).then_some(m)
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek() == Some(c)).then(|| self.i += 1)
    }

    /// Members up to `close` (or the end of the text when `None`).
    fn members(&mut self, close: Option<u8>) -> Option<Vec<(&'a str, Node<'a>)>> {
        let mut out = Vec::new();
        self.ws();
        if self.peek() == close {
            return Some(out);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            let value = self.value()?;
            out.push((key, value));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                c if c == close => return Some(out),
                _ => return None,
            }
        }
    }

    fn string(&mut self) -> Option<&'a str> {
        let start = self.i;
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return self.s.get(start..self.i);
                }
                _ => self.i += 1,
            }
        }
    }

    fn value(&mut self) -> Option<Node<'a>> {
        self.ws();
        let start = self.i;
        match self.peek()? {
            b'{' => {
                self.i += 1;
                let m = self.members(Some(b'}'))?;
                self.i += 1;
                Some(Node::Object(self.s.get(start..self.i)?, m))
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() != Some(b']') {
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.peek()? {
                            b',' => self.i += 1,
                            b']' => break,
                            _ => return None,
                        }
                    }
                }
                self.i += 1;
                Some(Node::Array(self.s.get(start..self.i)?, items))
            }
            b'"' => self.string().map(Node::Scalar),
            _ => {
                while matches!(self.peek(), Some(c) if !matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                {
                    self.i += 1;
                }
                (self.i > start).then(|| Node::Scalar(&self.s[start..self.i]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn th(bytes: u64, percent: f64) -> Rule {
        Rule {
            min_change: MinChange {
                bytes: ByteSize(bytes),
                percent,
            },
            volatile: &["state"],
        }
    }

    fn delta(sent: &str, new: &str) -> String {
        let mut out = String::new();
        delta_body_without(sent, new, &[], &mut out).expect("readable");
        out
    }

    /// RFC 7386, as a reader applies it.
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        crate::view::state::merge(target, patch.clone());
    }

    fn obj(body: &str) -> serde_json::Value {
        serde_json::from_str(&format!("{{{body}}}")).expect("json")
    }

    #[test]
    fn bytes_move_only_past_both_thresholds_of_the_value_sent() {
        let r = th(1000, 10.0);
        let sent = r#""pid":1,"pss_bytes":20000"#;
        assert_eq!(moved(sent, sent, &r), Moved::Same);
        // 1500 is past 1000 bytes but under 10 % of 20000.
        assert_eq!(
            moved(sent, r#""pid":1,"pss_bytes":21500"#, &r),
            Moved::Within
        );
        assert_eq!(
            moved(sent, r#""pid":1,"pss_bytes":22000"#, &r),
            Moved::Beyond
        );
        assert_eq!(
            moved(sent, r#""pid":1,"pss_bytes":17000"#, &r),
            Moved::Beyond
        );
        // Small values: the absolute threshold rules.
        let small = r#""pid":1,"pss_bytes":100"#;
        assert_eq!(
            moved(small, r#""pid":1,"pss_bytes":900"#, &r),
            Moved::Within
        );
        assert_eq!(
            moved(small, r#""pid":1,"pss_bytes":1100"#, &r),
            Moved::Beyond
        );
        // Exact rule: any move.
        assert_eq!(
            moved(small, r#""pid":1,"pss_bytes":101"#, &th(0, 0.0)),
            Moved::Beyond
        );
    }

    #[test]
    fn other_fields_move_on_any_difference_but_volatile_ones_never_alone() {
        let r = th(1 << 20, 1.0);
        let sent = r#""pid":1,"state":"S","name":"a","subtree":{"processes":2,"pss_bytes":10}"#;
        let state = r#""pid":1,"state":"R","name":"a","subtree":{"processes":2,"pss_bytes":10}"#;
        assert_eq!(moved(sent, state, &r), Moved::Within);
        let name = r#""pid":1,"state":"S","name":"b","subtree":{"processes":2,"pss_bytes":10}"#;
        assert_eq!(moved(sent, name, &r), Moved::Beyond);
        let nested = r#""pid":1,"state":"S","name":"a","subtree":{"processes":3,"pss_bytes":10}"#;
        assert_eq!(moved(sent, nested, &r), Moved::Beyond, "a count at depth");
        let nested_bytes =
            r#""pid":1,"state":"S","name":"a","subtree":{"processes":2,"pss_bytes":11}"#;
        assert_eq!(
            moved(sent, nested_bytes, &r),
            Moved::Within,
            "bytes at depth"
        );
        // Arrays: same length compare element-wise; another length is a change.
        let top = |a: &str| format!(r#""id":"x","top":[{a}]"#);
        let one = top(r#"{"pid":1,"pss_bytes":5}"#);
        let one_moved = top(r#"{"pid":1,"pss_bytes":6}"#);
        let other = top(r#"{"pid":2,"pss_bytes":5}"#);
        let two = top(r#"{"pid":1,"pss_bytes":5},{"pid":2,"pss_bytes":5}"#);
        assert_eq!(moved(&one, &one_moved, &r), Moved::Within);
        assert_eq!(moved(&one, &other, &r), Moved::Beyond);
        assert_eq!(moved(&one, &two, &r), Moved::Beyond);
        // A field appearing or going away.
        assert_eq!(moved(sent, r#""pid":1"#, &r), Moved::Beyond);
        assert_eq!(moved(r#""pid":1"#, sent, &r), Moved::Beyond);
        // Unreadable: changed.
        assert_eq!(moved("\"pid\":1", "\"pid\":", &r), Moved::Beyond);
    }

    #[test]
    fn an_entity_delta_sends_what_moved_and_the_reader_holds_the_rest() {
        let r = th(1000, 0.0);
        let sent = r#""pid":7,"state":"S","name":"a","pss_bytes":5000,"uss_bytes":4000,"subtree":{"processes":2,"pss_bytes":10000,"uss_bytes":9000},"gone":1"#;
        let new = r#""pid":7,"state":"R","name":"a","pss_bytes":7000,"uss_bytes":4500,"subtree":{"processes":2,"pss_bytes":10100,"uss_bytes":12000},"added":2"#;
        assert_eq!(moved(sent, new, &r), Moved::Beyond);
        let (mut d, mut held) = (String::new(), String::new());
        entity_delta(sent, new, &r, &mut d, &mut held).expect("readable");
        assert_eq!(
            d,
            r#""delta":true,"pid":7,"state":"R","pss_bytes":7000,"subtree":{"uss_bytes":12000},"added":2,"gone":null"#,
            "moved bytes, the volatile state, new and gone members; not uss_bytes (500 < 1000)"
        );
        // The reader's copy after the patch is what the store keeps as the reference.
        let mut reader = obj(sent);
        merge(&mut reader, &obj(&d));
        if let Some(o) = reader.as_object_mut() {
            o.remove("delta");
        }
        assert_eq!(reader, obj(&held));
        assert_eq!(obj(&held)["uss_bytes"], 4000, "within: the value last sent");
        assert_eq!(obj(&held)["subtree"]["pss_bytes"], 10000);
    }

    #[test]
    fn a_delta_patches_the_readers_copy_into_the_new_body() {
        let cases = [
            (
                r#""pid":7,"name":"a","state":"S","pss_bytes":1,"subtree":{"processes":2,"pss_bytes":10},"cgroup":"/x""#,
                r#""pid":7,"name":"a","state":"R","pss_bytes":5000000,"subtree":{"processes":2,"pss_bytes":12},"cgroup":null"#,
            ),
            (
                r#""id":"memfd:0:1:2","top":[{"pid":1}],"error":"e","n":{"a":{"b":1,"c":2}}"#,
                r#""id":"memfd:0:1:2","top":[{"pid":1},{"pid":2}],"n":{"a":{"b":1,"c":3},"d":[]}"#,
            ),
            (
                r#""x":"q\"uote,{}","y":-1.5"#,
                r#""x":"q\"uote,{]","y":2e3"#,
            ),
        ];
        for (sent, new) in cases {
            let d = delta(sent, new);
            let patch = obj(&d);
            assert_eq!(patch["delta"], true);
            let mut reader = obj(sent);
            merge(&mut reader, &patch);
            if let Some(o) = reader.as_object_mut() {
                o.remove("delta");
            }
            let mut want = obj(new);
            // Absent and null mean the same: compare without the nulls.
            if let Some(o) = want.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
            assert_eq!(reader, want, "{sent} -> {new}: {d}");
        }
        let d = delta(cases[0].0, cases[0].1);
        assert!(d.starts_with(r#""delta":true,"pid":7,"#), "{d}");
        assert!(
            !d.contains("\"name\""),
            "unchanged fields are left out: {d}"
        );
        assert!(
            d.contains(r#""subtree":{"pss_bytes":12}"#),
            "nested patch: {d}"
        );
        assert!(d.contains(r#""cgroup":null"#), "{d}");
        assert_eq!(
            delta(r#""pid":1,"a":1"#, r#""pid":1,"a":1"#),
            r#""delta":true,"pid":1"#
        );
        let mut out = String::new();
        let skip: &[Skip<'_>] = &[("b", None), ("c", Some(&["runs"]))];
        let sent = r#""a":1,"b":{"x":1},"c":{"p":{"runs":1,"failures":0}}"#;
        let runs = r#""a":2,"b":{"x":2},"c":{"p":{"runs":2,"failures":0}}"#;
        let failed = r#""a":2,"b":{"x":2},"c":{"p":{"runs":2,"failures":1}}"#;
        delta_body_without(sent, runs, skip, &mut out).expect("readable");
        assert_eq!(
            out, r#""delta":true,"a":2"#,
            "b skipped, c only counted runs"
        );
        out.clear();
        delta_body_without(sent, failed, skip, &mut out).expect("readable");
        assert_eq!(
            out, r#""delta":true,"a":2,"c":{"p":{"runs":2,"failures":1}}"#,
            "c had a failure: sent, with its runs"
        );
    }
}
