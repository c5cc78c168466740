//! Text from a trace file made safe to show. A trace is input like any other: a hostile one
//! can carry escape sequences in its hostname, kernel, alert messages or `part_end.next`,
//! which a terminal would obey (retitle the window, rewrite lines above, hide text), and
//! newlines that forge lines of the report. Every string the report takes from a file goes
//! through [`printable`] once, where it enters the [`super::Report`] or a warning, so no
//! renderer (text, HTML, JSON, stderr) can print one raw.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// Characters a terminal or a reader could be fooled by: C0 and C1 controls (ESC, CR, LF, BEL,
/// CSI...), DEL, and the bidirectional overrides and isolates that reorder what is shown.
fn is_hostile(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every such character written visibly as `\u{..}`; unchanged (and not copied)
/// when there is none, the normal case.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_hostile(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`printable`] into an owned string.
pub fn owned(s: &str) -> String {
    printable(s).into_owned()
}

/// Every string of a JSON value (keys too), made printable.
pub fn value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(owned(s)),
        Value::Array(a) => Value::Array(a.iter().map(value).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (owned(k), value(v))).collect()),
        other => other.clone(),
    }
}

/// A map of strings (sysctls), made printable.
pub fn map(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (owned(k), owned(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_shown_not_obeyed() {
        assert!(matches!(printable("host-1.example"), Cow::Borrowed(_)));
        assert_eq!(printable("évian 6.18"), "évian 6.18");
        assert_eq!(
            printable("h\u{1b}]0;pwned\u{7}x"),
            "h\\u{1b}]0;pwned\\u{7}x"
        );
        assert_eq!(printable("a\nFINDING: b\r"), "a\\u{a}FINDING: b\\u{d}");
        assert_eq!(printable("\u{9b}31m\u{7f}"), "\\u{9b}31m\\u{7f}");
        assert_eq!(printable("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
    }

    #[test]
    fn json_strings_and_keys_are_made_printable() {
        let v = serde_json::json!({"k\u{1b}": ["\u{1b}[2J", 3, {"n": "ok"}]});
        assert_eq!(
            value(&v),
            serde_json::json!({"k\\u{1b}": ["\\u{1b}[2J", 3, {"n": "ok"}]})
        );
    }
}
