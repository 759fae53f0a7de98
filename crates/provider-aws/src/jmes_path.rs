//! jmesPath expressions, limited to the key paths ASCP documents: a key (`username`), a quoted
//! key (`"my-key"`), sub-keys (`db.user`) and array indexes (`hosts[0]`, `hosts[-1]`).
//!
//! Why not all of JMESPath: its parsers recurse once per nesting level (100,000 `!` overflowed
//! the node agent's stack before any AWS call), and its evaluation is unbounded (each `[@,@][]`
//! doubles an array: 169 bytes build 2 million elements). ASCP's documentation and tests only
//! ever pick one value out of a JSON secret by its key path. A key path is parsed here in one
//! loop and evaluated in one step per key, so its cost is linear in its length, with no
//! recursion anywhere; everything else is refused with an error that says what is supported.
//! Length and nesting are checked first, on the raw text ([`crate::limits`]).

use serde_json::Value;

use crate::limits::{Exceeded, Limit, SHOWN_PATH_BYTES, shown};

/// What an expression may be, for error messages.
const SUPPORTED: &str = "jmesPath supports key paths: keys (username), quoted keys (\"my-key\"), \
     sub-keys (db.user) and array indexes (hosts[0])";

const HYPHEN_HINT: &str = "; keys containing '-' or other special characters must be quoted, \
     e.g. path: '\"my-key\"' or path: \"\\\"my-key\\\"\"";

/// A parsed key path: the steps from the root of a secret's JSON value to one value in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPath {
    steps: Vec<Step>,
}

/// One step of a [`KeyPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The value under a key of a JSON object.
    Key(String),
    /// An element of a JSON array; a negative index counts from the end.
    Index(i64),
}

/// Why a jmesPath expression was refused. Never includes the secret's value (none is known yet).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyPathError {
    /// Longer or deeper than [`crate::limits`] allow; checked before parsing.
    #[error(transparent)]
    Limit(#[from] Exceeded),
    /// Not a key path, or not well-formed.
    #[error("{reason} at byte {at}; {SUPPORTED}{hint}")]
    Invalid {
        /// Byte offset of the problem.
        at: usize,
        /// What is wrong there.
        reason: String,
        /// How to fix the common mistake, if it applies.
        hint: &'static str,
    },
}

impl KeyPath {
    /// Parses `expr` after checking its length and nesting.
    pub fn parse(expr: &str) -> Result<Self, KeyPathError> {
        Limit::JmesPathBytes.check(expr.len())?;
        Limit::JmesNesting.check(nesting(expr))?;
        Parser { src: expr, pos: 0 }
            .key_path()
            .map_err(|(at, reason)| {
                // The mistake ASCP's docs warn about: an unquoted key with a '-' in it.
                let hint = if expr.contains('-') && !expr.contains('"') {
                    HYPHEN_HINT
                } else {
                    ""
                };
                KeyPathError::Invalid { at, reason, hint }
            })
    }

    /// The steps, root first.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The value the path points to in `root`, as JMESPath evaluates it: `None` where a key is
    /// missing, an index is out of range, or a step meets the wrong kind of value.
    pub fn select<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.steps.iter().try_fold(root, |value, step| match step {
            Step::Key(key) => value.as_object()?.get(key),
            Step::Index(i) => {
                let array = value.as_array()?;
                let at = if *i < 0 {
                    array
                        .len()
                        .checked_sub(usize::try_from(i.unsigned_abs()).ok()?)?
                } else {
                    usize::try_from(*i).ok()?
                };
                array.get(at)
            }
        })
    }
}

/// The deepest nesting in `expr`: brackets open at once plus `!` applied in a row (a `!` run
/// continues through brackets and whitespace, as the parser's recursion does). Quoted text is
/// skipped. One pass, no allocation.
fn nesting(expr: &str) -> usize {
    let b = expr.as_bytes();
    let (mut depth, mut bangs, mut max) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            quote @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                bangs = 0;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                bangs = 0;
            }
            b'!' if b.get(i + 1) != Some(&b'=') => bangs += 1,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => bangs = 0,
        }
        max = max.max(depth + bangs);
        i += 1;
    }
    max
}

/// A position in the expression and the error at it.
type ParseError = (usize, String);

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn error<T>(&self, reason: impl Into<String>) -> Result<T, ParseError> {
        Err((self.pos, reason.into()))
    }

    /// `key-path = (key / index) *("." key / index)`, whitespace allowed between tokens.
    fn key_path(mut self) -> Result<KeyPath, ParseError> {
        let mut steps = Vec::new();
        self.skip_whitespace();
        loop {
            let step = match self.peek() {
                Some(b'[') => self.index()?,
                _ => self.key()?,
            };
            steps.push(step);
            self.skip_whitespace();
            loop {
                match self.peek() {
                    None => return Ok(KeyPath { steps }),
                    Some(b'[') => {
                        steps.push(self.index()?);
                        self.skip_whitespace();
                    }
                    Some(b'.') => {
                        self.pos += 1;
                        self.skip_whitespace();
                        break;
                    }
                    Some(_) => return self.unsupported(),
                }
            }
            // After a '.', only a key may follow (`a.[0]` and `a.*` are JMESPath projections).
            if !matches!(self.peek(), Some(b'"' | b'_' | b'a'..=b'z' | b'A'..=b'Z')) {
                return match self.peek() {
                    None => self.error("expected a key after '.'"),
                    Some(_) => self.unsupported(),
                };
            }
        }
    }

    /// An unquoted or quoted key.
    fn key(&mut self) -> Result<Step, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted_key(),
            Some(b'_' | b'a'..=b'z' | b'A'..=b'Z') => {
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9')
                ) {
                    self.pos += 1;
                }
                Ok(Step::Key(self.src[start..self.pos].to_string()))
            }
            None => self.error("expected a key"),
            Some(_) => self.unsupported(),
        }
    }

    /// `"..."` with JSON string escapes, as JMESPath's quoted identifiers.
    fn quoted_key(&mut self) -> Result<Step, ParseError> {
        let start = self.pos;
        let b = self.src.as_bytes();
        let mut i = start + 1;
        while i < b.len() && b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        if i >= b.len() {
            return self.error("unclosed quoted key");
        }
        match serde_json::from_str::<String>(&self.src[start..=i]) {
            Ok(key) => {
                self.pos = i + 1;
                Ok(Step::Key(key))
            }
            Err(e) => self.error(format!("invalid quoted key ({e})")),
        }
    }

    /// `[` optional `-`, digits `]`.
    fn index(&mut self) -> Result<Step, ParseError> {
        self.pos += 1;
        self.skip_whitespace();
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        let digits = &self.src[start..self.pos];
        if digits.is_empty() || digits == "-" {
            self.pos = start;
            return match self.peek() {
                None => self.error("unclosed '['"),
                Some(_) => self.unsupported(),
            };
        }
        let Ok(index) = digits.parse::<i64>() else {
            self.pos = start;
            return self.error(format!(
                "index {} is out of range",
                shown(digits, SHOWN_PATH_BYTES)
            ));
        };
        self.skip_whitespace();
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                Ok(Step::Index(index))
            }
            None => self.error("unclosed '['"),
            Some(_) => self.unsupported(),
        }
    }

    /// The error for a character a key path cannot have here, naming the JMESPath feature it
    /// would start where that is clear.
    fn unsupported<T>(&self) -> Result<T, ParseError> {
        let c = self.src[self.pos..].chars().next().unwrap_or(' ');
        let feature = match c {
            '!' => " (not)",
            '(' | ')' => " (functions and grouping)",
            '|' => " (pipes and 'or')",
            '&' => " (and)",
            '@' => " (current node)",
            '*' => " (wildcards)",
            '?' => " (filters)",
            ':' => " (slices)",
            '{' | '}' => " (multi-select hashes)",
            '[' | ']' | ',' => " (projections, flattening and multi-select lists)",
            '\'' => " (raw string literals)",
            '`' => " (JSON literals)",
            '<' | '>' | '=' => " (comparisons)",
            _ => "",
        };
        self.error(format!("{c:?}{feature} is not supported"))
    }
}

#[cfg(test)]
#[path = "jmes_path_tests.rs"]
mod tests;
