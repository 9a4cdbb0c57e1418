//! The one error type of discovery.
//!
//! One enum rather than one per source: the command line mixes sources and
//! reports whichever failed, and each variant already says which source
//! kind it comes from.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a discovery source could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A line of a static candidate list is malformed.
    BadLine {
        /// Where the list came from: a file's path, or `<string>`.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A static list has more candidates than allowed.
    TooManyCandidates {
        /// Where the list came from: a file's path, or `<string>`.
        origin: String,
        /// The line of the first candidate over the limit (1-based).
        line: usize,
        /// The limit.
        max: usize,
    },
    /// A candidate list file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason, or "larger than N bytes".
        message: String,
    },
    /// A discovery specification (`static:`, `srv:`, `mdns:`) is malformed.
    BadSpec {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// A DNS or mDNS name is not a valid name.
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The DNS lookup failed (server failure, refused, no name server
    /// reachable, malformed answer, no usable system configuration).
    /// A name that does not exist or has no SRV records is not an error.
    Dns {
        /// The name looked up.
        name: String,
        /// The resolver's reason.
        message: String,
    },
    /// The lookup did not finish within its deadline.
    Timeout {
        /// What was being looked up.
        name: String,
        /// The deadline.
        after: Duration,
    },
    /// mDNS cannot be used here (the daemon could not start or browse).
    MdnsUnavailable {
        /// The reason given by the mDNS library.
        message: String,
    },
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLine {
                origin,
                line,
                message,
            } => write!(f, "{origin}, line {line}: {message}"),
            Self::TooManyCandidates { origin, line, max } => write!(
                f,
                "{origin}, line {line}: more than {max} candidates (the limit)"
            ),
            Self::Read { path, message } => {
                write!(f, "cannot read {}: {message}", path.display())
            }
            Self::BadSpec { spec, message } => {
                write!(f, "bad discovery specification {spec:?}: {message}")
            }
            Self::BadName { name, message } => write!(f, "bad name {name:?}: {message}"),
            Self::Dns { name, message } => write!(f, "DNS lookup of {name} failed: {message}"),
            Self::Timeout { name, after } => write!(
                f,
                "lookup of {name} timed out after {:.1} s",
                after.as_secs_f64()
            ),
            Self::MdnsUnavailable { message } => write!(f, "mDNS unavailable: {message}"),
        }
    }
}

impl std::error::Error for DiscoveryError {}
