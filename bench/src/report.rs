//! Output helpers: one hand-written JSON object per stdout line, and medians.
//!
//! Benchmarks are read by scripts, so every result is a flat JSON object on
//! a line of its own (no external JSON crate needed for that). Progress and
//! explanations go to stderr so stdout stays machine-readable.

use std::fmt::Write as _;

/// A flat JSON object built field by field, printed as one line.
#[derive(Debug, Clone)]
pub struct Line {
    body: String,
}

impl Line {
    /// A line whose first field is `"scenario": name`.
    pub fn new(scenario: &str) -> Self {
        let mut line = Line {
            body: String::with_capacity(128),
        };
        line.body.push('{');
        line.str("scenario", scenario)
    }

    fn key(&mut self, key: &str) {
        if self.body.len() > 1 {
            self.body.push(',');
        }
        push_string(&mut self.body, key);
        self.body.push(':');
    }

    /// A string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_string(&mut self.body, value);
        self
    }

    /// An integer field.
    pub fn int(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        let _ = write!(self.body, "{value}");
        self
    }

    /// A boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.body.push_str(if value { "true" } else { "false" });
        self
    }

    /// A number field with `decimals` digits after the point (`null` if not
    /// finite, which JSON cannot represent).
    pub fn num(mut self, key: &str, value: f64, decimals: usize) -> Self {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.body, "{value:.decimals$}");
        } else {
            self.body.push_str("null");
        }
        self
    }

    /// A number field in Rust's shortest round-trip form (`0.0`, `0.01`),
    /// for parameters echoed back exactly.
    pub fn exact(mut self, key: &str, value: f64) -> Self {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.body, "{value:?}");
        } else {
            self.body.push_str("null");
        }
        self
    }

    /// Prints the line to stdout.
    pub fn emit(mut self) {
        self.body.push('}');
        println!("{}", self.body);
    }
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Median of a non-empty sample (the mean of the two middle values for an
/// even count).
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Largest value of a non-empty sample.
pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(max(&[1.0, 5.0, 2.0]), 5.0);
    }

    #[test]
    fn json_escapes_and_formats() {
        let mut s = String::new();
        push_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, r#""a\"b\\c\u000a""#);
        let line = Line::new("x")
            .num("r", 0.12345, 3)
            .int("n", 7)
            .bool("ok", true);
        assert_eq!(line.body, r#"{"scenario":"x","r":0.123,"n":7,"ok":true"#);
        let line = Line::new("x").exact("a", 0.0).exact("b", 0.01);
        assert_eq!(line.body, r#"{"scenario":"x","a":0.0,"b":0.01"#);
        let line = Line::new("x").num("nan", f64::NAN, 2);
        assert_eq!(line.body, r#"{"scenario":"x","nan":null"#);
    }
}
