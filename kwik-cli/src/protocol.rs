//! The request framing between `kwik get` and a primary, and the resource
//! descriptor primaries and secondaries agree on.
//!
//! kwik carries bytes; which file a stream holds is the application's
//! business. The framing is kept to one line each way so that it can be
//! read in a packet capture and re-implemented in a few lines (the crate
//! docs give the grammar).

use std::fmt;

/// Longest request (a path) a primary reads.
pub const MAX_REQUEST: usize = 4096;
/// Longest response line a client reads.
pub const MAX_RESPONSE: usize = 4096;
/// Tag opening every descriptor: a secondary serves only what it knows by
/// this exact name, size and digest.
const DESCRIPTOR_TAG: &str = "kwik-cli/1";

/// A primary's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The file follows on the server-opened unidirectional stream `stream`.
    Ok {
        /// Its length in bytes.
        size: u64,
        /// Its SHA-256.
        sha256: [u8; 32],
        /// The id of the unidirectional stream carrying it.
        stream: u64,
    },
    /// No such regular file.
    NotFound(String),
    /// The path is refused (it leads outside the served directory).
    Forbidden(String),
    /// The request is malformed.
    BadRequest(String),
    /// The server failed to read the file.
    Error(String),
}

impl Response {
    /// The response line, newline included.
    pub fn encode(&self) -> String {
        match self {
            Response::Ok {
                size,
                sha256,
                stream,
            } => format!("OK {size} {} {stream}\n", hex(sha256)),
            Response::NotFound(m) => format!("NOT_FOUND {}\n", one_line(m)),
            Response::Forbidden(m) => format!("FORBIDDEN {}\n", one_line(m)),
            Response::BadRequest(m) => format!("BAD_REQUEST {}\n", one_line(m)),
            Response::Error(m) => format!("ERROR {}\n", one_line(m)),
        }
    }

    /// Parses a response line (the trailing newline is optional).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let line = std::str::from_utf8(bytes).map_err(|_| "response is not UTF-8".to_string())?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        let (status, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.to_string();
        match status {
            "OK" => {
                let mut fields = rest.split(' ');
                let (Some(size), Some(digest), Some(stream), None) =
                    (fields.next(), fields.next(), fields.next(), fields.next())
                else {
                    return Err(format!("malformed OK response {line:?}"));
                };
                Ok(Response::Ok {
                    size: size.parse().map_err(|_| format!("bad size {size:?}"))?,
                    sha256: unhex(digest).ok_or_else(|| format!("bad digest {digest:?}"))?,
                    stream: stream
                        .parse()
                        .map_err(|_| format!("bad stream {stream:?}"))?,
                })
            }
            "NOT_FOUND" => Ok(Response::NotFound(rest)),
            "FORBIDDEN" => Ok(Response::Forbidden(rest)),
            "BAD_REQUEST" => Ok(Response::BadRequest(rest)),
            "ERROR" => Ok(Response::Error(rest)),
            _ => Err(format!("unknown response status {status:?}")),
        }
    }
}

/// What a served file is known by: its relative path, size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// Path relative to the served directory, `/`-separated.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

impl Descriptor {
    /// The bytes carried in delegations: `kwik-cli/1 SIZE SHA256HEX PATH`.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{DESCRIPTOR_TAG} {} {} {}",
            self.size,
            hex(&self.sha256),
            self.path
        )
        .into_bytes()
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.splitn(4, ' ');
        if fields.next()? != DESCRIPTOR_TAG {
            return None;
        }
        Some(Self {
            size: fields.next()?.parse().ok()?,
            sha256: unhex(fields.next()?)?,
            path: fields.next()?.to_string(),
        })
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.path, self.size)
    }
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hexadecimal digits.
pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Messages travel on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip() {
        let cases = [
            Response::Ok {
                size: 7,
                sha256: [0xab; 32],
                stream: 3,
            },
            Response::NotFound("a b".into()),
            Response::Forbidden("x".into()),
            Response::BadRequest(String::new()),
            Response::Error("disk".into()),
        ];
        for case in cases {
            assert_eq!(Response::decode(case.encode().as_bytes()), Ok(case));
        }
        assert!(Response::decode(b"OK 1 2").is_err());
        assert!(Response::decode(b"MAYBE").is_err());
    }

    #[test]
    fn descriptors_round_trip() {
        let d = Descriptor {
            path: "dir/a file".into(),
            size: 42,
            sha256: [7; 32],
        };
        assert_eq!(Descriptor::decode(&d.encode()), Some(d));
        assert_eq!(Descriptor::decode(b"other 1 2 3"), None);
    }
}
