//! `hostile_peer` (see below).
