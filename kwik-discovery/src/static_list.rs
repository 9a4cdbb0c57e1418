//! A candidate list written by hand.
//!
//! The simplest source, and the one to start with: nothing runs, and what
//! the primary will use is exactly what the file says. The text format is
//! one candidate per line,
//!
//! ```text
//! # ADDRESS            SERVER_NAME            [priority=N] [weight=N] [region=R]
//! 192.0.2.10:4433      s1.example.com         priority=10 weight=60 region=eu-west
//! [2001:db8::7]:4433   s2.example.com
//! ```
//!
//! where ADDRESS is an IP address and port (no host names: a list that
//! needs resolving belongs in DNS, see [`DnsSrv`](crate::DnsSrv)),
//! SERVER_NAME the name the secondary's certificate must be valid for, and
//! the options, in any order and each at most once, default to priority 0,
//! weight 0 and no region. `#` starts a comment that runs to the end of the
//! line; blank lines are ignored. Every mistake is reported with its line
//! number, and so is a list longer than its limit: a list that silently
//! dropped lines would hide the error from the operator.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;

use crate::{
    Candidate, DEFAULT_MAX_CANDIDATES, DiscoverFuture, Discovery, DiscoveryError, normalize,
};

/// Largest candidate file read (1 MiB: far more than any sane list).
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest server name (a DNS name's limit).
const MAX_NAME_LEN: usize = 253;
/// Longest region label.
const MAX_REGION_LEN: usize = 64;

/// A fixed list of candidates, from code or from a list in the text format
/// of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticList {
    candidates: Vec<Candidate>,
    origin: String,
}

impl StaticList {
    /// The given candidates, in the crate's order (one per address, at most
    /// [`DEFAULT_MAX_CANDIDATES`]).
    pub fn new(candidates: Vec<Candidate>) -> Self {
        Self::with_limit(candidates, DEFAULT_MAX_CANDIDATES)
    }

    /// The given candidates, in the crate's order, one per address, at most
    /// `max`.
    pub fn with_limit(mut candidates: Vec<Candidate>, max: usize) -> Self {
        normalize(&mut candidates, max);
        Self {
            candidates,
            origin: "<code>".into(),
        }
    }

    /// Parses a list in this module's text format, with at most
    /// [`DEFAULT_MAX_CANDIDATES`] candidates.
    pub fn parse(text: &str) -> Result<Self, DiscoveryError> {
        Self::parse_with_limit(text, DEFAULT_MAX_CANDIDATES)
    }

    /// Parses a list in this module's text format, with at most `max`
    /// candidates.
    pub fn parse_with_limit(text: &str, max: usize) -> Result<Self, DiscoveryError> {
        parse(text, "<string>", max)
    }

    /// Reads and parses a list file, with at most
    /// [`DEFAULT_MAX_CANDIDATES`] candidates.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DiscoveryError> {
        Self::from_file_with_limit(path, DEFAULT_MAX_CANDIDATES)
    }

    /// Reads and parses a list file (at most 1 MiB), with at most `max`
    /// candidates. Errors name the file and the line.
    pub fn from_file_with_limit(
        path: impl AsRef<Path>,
        max: usize,
    ) -> Result<Self, DiscoveryError> {
        let path = path.as_ref();
        let read_error = |message: String| DiscoveryError::Read {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(e.to_string()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(read_error(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| read_error("not UTF-8 text".into()))?;
        parse(&text, &path.display().to_string(), max)
    }

    /// The candidates, in the crate's order.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }
}

impl Discovery for StaticList {
    fn discover(&self) -> DiscoverFuture<'_> {
        let candidates = self.candidates.clone();
        Box::pin(async move { Ok(candidates) })
    }

    fn describe(&self) -> String {
        format!("static:{}", self.origin)
    }
}

fn parse(text: &str, origin: &str, max: usize) -> Result<StaticList, DiscoveryError> {
    // Address → line of its first mention, for duplicate reports.
    let mut lines_of = std::collections::BTreeMap::new();
    let mut candidates = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let bad = |message: String| DiscoveryError::BadLine {
            origin: origin.to_string(),
            line: number,
            message,
        };
        let Some(candidate) = parse_line(line).map_err(bad)? else {
            continue;
        };
        if let Some(first) = lines_of.insert(candidate.address, number) {
            return Err(bad(format!(
                "address {} already listed on line {first}",
                candidate.address
            )));
        }
        if candidates.len() == max {
            return Err(DiscoveryError::TooManyCandidates {
                origin: origin.to_string(),
                line: number,
                max,
            });
        }
        candidates.push(candidate);
    }
    normalize(&mut candidates, max);
    Ok(StaticList {
        candidates,
        origin: origin.to_string(),
    })
}

/// One line: `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<Candidate>, String> {
    let content = line.split_once('#').map_or(line, |(before, _)| before);
    let mut words = content.split_whitespace();
    let Some(address) = words.next() else {
        return Ok(None);
    };
    let address: SocketAddr = address
        .parse()
        .map_err(|_| format!("expected an address IP:PORT or [IPv6]:PORT, found {address:?}"))?;
    if let Some(why) = kwik_core::undialable(address) {
        return Err(format!("{address} cannot be a secondary: {why}"));
    }
    let name = words
        .next()
        .ok_or_else(|| "missing SERVER_NAME after the address".to_string())?;
    check_label("server name", name, MAX_NAME_LEN)?;
    if name.contains('=') {
        return Err(format!(
            "missing SERVER_NAME after the address (found option {name:?})"
        ));
    }
    let mut candidate = Candidate::new(address, name);
    let (mut priority, mut weight) = (None, None);
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, found {word:?}"))?;
        match key {
            "priority" => set_once(&mut priority, key, parse_u16(key, value)?)?,
            "weight" => set_once(&mut weight, key, parse_u16(key, value)?)?,
            "region" => {
                check_label("region", value, MAX_REGION_LEN)?;
                let mut region = candidate.region.take();
                set_once(&mut region, key, value.to_string())?;
                candidate.region = region;
            }
            _ => {
                return Err(format!(
                    "unknown option {key:?} (expected priority, weight or region)"
                ));
            }
        }
    }
    candidate.priority = priority.unwrap_or(0);
    candidate.weight = weight.unwrap_or(0);
    Ok(Some(candidate))
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("option {key} given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_u16(key: &str, value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("{key} must be an integer from 0 to 65535, found {value:?}"))
}

fn check_label(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("empty {what}"));
    }
    if value.len() > max {
        return Err(format!("{what} longer than {max} bytes"));
    }
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{what} {value:?} has characters other than printable ASCII"
        ));
    }
    Ok(())
}
