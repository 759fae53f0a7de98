//! Key paths: what is accepted, what each refusal says, the limits, and evaluation.

use serde_json::json;

use super::*;
use crate::limits::{MAX_JMES_NESTING, MAX_JMES_PATH_BYTES};

fn keys(path: &str) -> Vec<Step> {
    KeyPath::parse(path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .steps()
        .to_vec()
}

fn key(k: &str) -> Step {
    Step::Key(k.into())
}

fn refused(path: &str) -> KeyPathError {
    match KeyPath::parse(path) {
        Ok(p) => panic!("{path:?} accepted as {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_documented_shapes_parse() {
    assert_eq!(keys("username"), [key("username")]);
    assert_eq!(keys("dbUser.username"), [key("dbUser"), key("username")]);
    assert_eq!(keys("\"my-key\""), [key("my-key")]);
    assert_eq!(keys("a.\"b.c\".d"), [key("a"), key("b.c"), key("d")]);
    assert_eq!(keys("hosts[0]"), [key("hosts"), Step::Index(0)]);
    assert_eq!(keys("hosts[-1]"), [key("hosts"), Step::Index(-1)]);
    assert_eq!(
        keys("a[0][1].b"),
        [key("a"), Step::Index(0), Step::Index(1), key("b")]
    );
    assert_eq!(keys("[2]"), [Step::Index(2)]);
    assert_eq!(keys("_x1.Y_2"), [key("_x1"), key("Y_2")]);
    // Whitespace between tokens, as JMESPath's lexer allows.
    assert_eq!(keys(" a . b [ 0 ] "), [key("a"), key("b"), Step::Index(0)]);
    // JSON escapes in quoted keys, and characters that are special elsewhere.
    assert_eq!(keys(r#""\u00e9\"x""#), [key("é\"x")]);
    assert_eq!(keys(r#""a*b&c!(d)|[e]""#), [key("a*b&c!(d)|[e]")]);
}

#[test]
fn everything_else_is_refused_naming_the_feature() {
    for (path, want) in [
        ("", "expected a key at byte 0"),
        ("  ", "expected a key at byte 2"),
        ("a.", "expected a key after '.'"),
        ("a[", "unclosed '['"),
        ("a[0", "unclosed '['"),
        ("\"abc", "unclosed quoted key"),
        (r#""\x""#, "invalid quoted key"),
        ("|", "'|' (pipes and 'or')"),
        ("a || b", "(pipes and 'or')"),
        ("a && b", "(and)"),
        ("length(a)", "'(' (functions and grouping)"),
        ("to_string(port)", "(functions and grouping)"),
        ("!a", "'!' (not)"),
        ("@", "'@' (current node)"),
        ("a[*]", "'*' (wildcards)"),
        ("a.*", "'*' (wildcards)"),
        ("a[]", "']' (projections"),
        ("a.[0]", "'[' (projections"),
        ("a[?b]", "'?' (filters)"),
        ("a[1:2]", "':' (slices)"),
        ("{a: b}", "'{' (multi-select hashes)"),
        ("a == b", "'=' (comparisons)"),
        ("a < b", "'<' (comparisons)"),
        ("`1`", "'`' (JSON literals)"),
        ("'x'", "'\\'' (raw string literals)"),
        ("a\"b\"", "'\"' is not supported"),
        (
            "a[99999999999999999999]",
            "index 99999999999999999999 is out of range",
        ),
    ] {
        let e = refused(path).to_string();
        assert!(e.contains(want), "{path:?}: {e}");
        assert!(e.contains("jmesPath supports key paths"), "{path:?}: {e}");
    }
}

#[test]
fn a_huge_index_is_named_without_echoing_it() {
    // Found by the jmes_path fuzz target: 1,000 digits came back whole in the message.
    let e = refused(&format!("a[2{}]", "0".repeat(1000))).to_string();
    let shown = format!("index 2{}… (1001 bytes) is out of range", "0".repeat(47));
    assert!(e.contains(&shown), "{e}");
    assert!(e.len() < 400, "{e}");
}

#[test]
fn an_unquoted_hyphen_gets_the_quoting_hint() {
    let e = refused("my-key").to_string();
    assert!(e.contains("'-' is not supported at byte 2"), "{e}");
    assert!(e.contains("must be quoted, e.g. path: '\"my-key\"'"), "{e}");
    assert!(!refused("\"a\"-b").to_string().contains("must be quoted"));
}

#[test]
fn the_array_doubling_expression_is_refused_before_any_evaluation() {
    // Each stage doubles the array: 21 stages (169 bytes) build 2,097,152 elements.
    let doubling = format!("@{}", "|[@,@][]".repeat(21));
    let e = refused(&doubling).to_string();
    assert!(
        e.contains("'@' (current node) is not supported at byte 0"),
        "{e}"
    );
    assert!(refused("[@,@][]").to_string().contains("'@'"));
}

#[test]
fn length_is_checked_first_and_names_the_size() {
    let bangs = "!".repeat(100_000);
    assert_eq!(
        refused(&bangs),
        KeyPathError::Limit(Exceeded {
            limit: Limit::JmesPathBytes,
            seen: 100_000
        })
    );
    assert_eq!(
        refused(&bangs).to_string(),
        "path is 100000 bytes; the limit is 4096 bytes"
    );
    let long = "a".repeat(MAX_JMES_PATH_BYTES);
    assert_eq!(keys(&long), [key(&long)]);
    let e = refused(&format!("{long}b"));
    assert!(
        matches!(e, KeyPathError::Limit(Exceeded { seen: 4097, .. })),
        "{e}"
    );
}

#[test]
fn nesting_is_checked_before_parsing_and_names_the_depth() {
    let over = MAX_JMES_NESTING + 1;
    let nested =
        |open: &str, close: &str, n: usize| format!("{}a{}", open.repeat(n), close.repeat(n));
    for (path, depth) in [
        (nested("(", ")", over), over),
        (nested("[", "]", over), over),
        (nested("{x:", "}", over), over),
        (format!("{}a", "!".repeat(over)), over),
        (format!("{}a", "! ".repeat(over)), over),
        // `!(!(…` recurses twice per pair in a JMESPath parser, so it counts twice.
        (nested("!(", ")", 17), 34),
        // Just inside the length limit: 2047 parentheses.
        (nested("(", ")", 2047), 2047),
    ] {
        assert_eq!(
            refused(&path),
            KeyPathError::Limit(Exceeded {
                limit: Limit::JmesNesting,
                seen: depth
            }),
            "{}",
            path.get(..40).unwrap_or(&path)
        );
    }
    let e = refused(&nested("(", ")", 2047)).to_string();
    assert!(e.contains("nests 2047 levels deep"), "{e}");
    // At the limit, nesting passes and the shape decides.
    let at = refused(&nested("(", ")", MAX_JMES_NESTING));
    assert!(matches!(at, KeyPathError::Invalid { .. }), "{at}");
    // Brackets inside quotes and `!=` are not nesting.
    let quoted = format!("\"{}\"", "[(!".repeat(40));
    assert_eq!(keys(&quoted), [key(&"[(!".repeat(40))]);
    assert_eq!(nesting(&"a != b && ".repeat(40)), 0);
    assert_eq!(nesting("[!a, !b]"), 2);
}

#[test]
fn select_walks_keys_and_indexes_like_jmespath() {
    let v = json!({
        "a": {"b": [1, "x", {"c": true}]},
        "my-key": "h",
        "n": null,
        "top": [[10, 20], [30]]
    });
    let at = |path: &str| KeyPath::parse(path).unwrap().select(&v).cloned();
    assert_eq!(at("a.b[1]"), Some(json!("x")));
    assert_eq!(at("a.b[-1].c"), Some(json!(true)));
    assert_eq!(at("a.b[-3]"), Some(json!(1)));
    assert_eq!(at("\"my-key\""), Some(json!("h")));
    assert_eq!(at("top[0][1]"), Some(json!(20)));
    assert_eq!(at("n"), Some(Value::Null));
    for missing in [
        "a.b[3]",
        "a.b[-4]",
        "a.x",
        "a.b.c",
        "a.b[0].c",
        "a[0]",
        "[0]",
        "nope.deeper",
        "top[-9223372036854775808]",
    ] {
        assert_eq!(at(missing), None, "{missing}");
    }
    assert_eq!(
        KeyPath::parse("[1]").unwrap().select(&json!(["a", "b"])),
        Some(&json!("b"))
    );
}
