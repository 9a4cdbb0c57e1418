//! Generated protobuf types for the wire (see `proto/` and PROTOCOL.md).
//!
//! The schema is compiled by `build.rs` with prost-build + protox, so the
//! only source of truth for message layouts is the `.proto` files.
#![allow(missing_docs, clippy::all)]

/// Types shared by the control and data planes.
pub mod common {
    include!(concat!(env!("OUT_DIR"), "/kwik.common.rs"));
}
/// Control-plane messages.
pub mod control {
    include!(concat!(env!("OUT_DIR"), "/kwik.control.rs"));
}
/// Data-plane record headers.
pub mod data {
    include!(concat!(env!("OUT_DIR"), "/kwik.data.rs"));
}
