//! Discovery sources named on a command line.
//!
//! `kwik serve --discover SPEC` takes one source per flag, written as
//! `KIND:ARGUMENT` so that one flag covers all kinds and a typo names the
//! kind it got wrong:
//!
//! * `static:PATH` — a candidate list file ([`StaticList`]'s format);
//! * `srv:NAME` — the SRV records of NAME, e.g. `srv:_kwik._udp.example.com`
//!   ([`DnsSrv`]; the name server is given separately, see [`SpecOptions`]);
//! * `mdns:SERVICE_TYPE` — an mDNS browse, e.g. `mdns:_kwik._udp.local.`
//!   ([`Mdns`]; `mdns:` alone browses for [`DEFAULT_MDNS_SERVICE`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::dns::DEFAULT_DNS_TIMEOUT;
use crate::mdns::DEFAULT_BROWSE_TIME;
use crate::{
    DEFAULT_MAX_CANDIDATES, DEFAULT_MDNS_SERVICE, Discovery, DiscoveryError, DnsSrv, Mdns,
    StaticList,
};

/// A parsed discovery specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySpec {
    /// `static:PATH`: a candidate list file.
    Static(PathBuf),
    /// `srv:NAME`: the SRV records of NAME (checked to be a valid DNS name).
    Srv(String),
    /// `mdns:SERVICE_TYPE`: an mDNS browse (service type with its final dot).
    Mdns(String),
}

/// Settings shared by the sources built from specifications.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpecOptions {
    /// Name server for `srv:` (plain DNS over UDP, TCP for truncated answers); the system's if `None`.
    pub dns_server: Option<SocketAddr>,
    /// Deadline of one `srv:` discovery.
    pub dns_timeout: Duration,
    /// Duration of one `mdns:` browse.
    pub mdns_browse: Duration,
    /// Most candidates one source returns.
    pub max_candidates: usize,
}

impl Default for SpecOptions {
    fn default() -> Self {
        Self {
            dns_server: None,
            dns_timeout: DEFAULT_DNS_TIMEOUT,
            mdns_browse: DEFAULT_BROWSE_TIME,
            max_candidates: DEFAULT_MAX_CANDIDATES,
        }
    }
}

/// Parses `static:PATH`, `srv:NAME` or `mdns:SERVICE_TYPE`.
pub fn parse_spec(spec: &str) -> Result<DiscoverySpec, DiscoveryError> {
    let bad = |message: &str| DiscoveryError::BadSpec {
        spec: spec.to_string(),
        message: message.to_string(),
    };
    let Some((kind, argument)) = spec.split_once(':') else {
        return Err(bad("expected static:PATH, srv:NAME or mdns:SERVICE_TYPE"));
    };
    match kind {
        "static" if argument.is_empty() => Err(bad("static: needs a file path")),
        "static" => Ok(DiscoverySpec::Static(PathBuf::from(argument))),
        "srv" if argument.is_empty() => {
            Err(bad("srv: needs a DNS name such as _kwik._udp.example.com"))
        }
        "srv" => Ok(DiscoverySpec::Srv(DnsSrv::new(argument)?.name())),
        "mdns" if argument.is_empty() => Ok(DiscoverySpec::Mdns(DEFAULT_MDNS_SERVICE.into())),
        "mdns" => Ok(DiscoverySpec::Mdns(
            Mdns::new(argument)?.service_type().into(),
        )),
        _ => Err(bad("unknown kind (expected static, srv or mdns)")),
    }
}

impl DiscoverySpec {
    /// The source this specification names. A `static:` file is read and
    /// checked here, so that its mistakes are reported at once.
    pub fn build(&self, options: &SpecOptions) -> Result<Box<dyn Discovery>, DiscoveryError> {
        Ok(match self {
            Self::Static(path) => Box::new(StaticList::from_file_with_limit(
                path,
                options.max_candidates,
            )?),
            Self::Srv(name) => {
                let mut srv = DnsSrv::new(name)?
                    .timeout(options.dns_timeout)
                    .max_candidates(options.max_candidates);
                if let Some(server) = options.dns_server {
                    srv = srv.name_server(server);
                }
                Box::new(srv)
            }
            Self::Mdns(service_type) => Box::new(
                Mdns::new(service_type)?
                    .browse_for(options.mdns_browse)
                    .max_candidates(options.max_candidates),
            ),
        })
    }
}
