//! Fuzz harnesses shared by `fuzz/` (cargo-fuzz) and the property tests in
//! `tests/tests/properties.rs`.
//!
//! Each submodule owns one target: its input type, the runner that feeds
//! the input to kwik and checks the target's invariants (panicking on a
//! violation, which is what both libFuzzer and `cargo test` report), and a
//! generator of genuine seed inputs. Keeping all of it here, not in the
//! fuzz crate, means that an input a fuzzer finds can be pasted into an
//! ordinary named regression test and run on stable.
//!
//! # Input format
//!
//! The structured inputs implement [`arbitrary::Arbitrary`] by hand over a
//! tiny byte format of our own ([`Input`]: single bytes, LEB128 varints and
//! length-prefixed byte strings) instead of the derive: the seed generators
//! can then *write* genuine inputs (a real handshake, real records) with
//! [`Output`], and a fuzzer mutating those bytes stays close to meaningful
//! programs. Every byte string parses: missing bytes read as zeros, so no
//! input is rejected.

use arbitrary::Unstructured;

pub mod control;
pub mod datagrams;
pub mod hostile;
pub mod lanes;
pub mod session;

/// Reads the harness byte format from an [`Unstructured`].
pub struct Input<'a, 'b> {
    u: &'b mut Unstructured<'a>,
}

impl<'a, 'b> Input<'a, 'b> {
    /// Reads from `u`.
    pub fn new(u: &'b mut Unstructured<'a>) -> Self {
        Self { u }
    }

    /// True once every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.u.is_empty()
    }

    /// One byte (0 once the input is exhausted).
    pub fn byte(&mut self) -> u8 {
        self.u.bytes(1).map_or(0, |b| b[0])
    }

    /// A LEB128 varint of at most 10 bytes.
    pub fn varint(&mut self) -> u64 {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte();
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        value
    }

    /// A varint clamped to `max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        self.varint().min(max)
    }

    /// A byte string: a varint length (clamped to `max` and to what is
    /// left), then that many bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.varint().min(max as u64) as usize).min(self.u.len());
        self.u
            .bytes(len)
            .map_or_else(|_| Vec::new(), <[u8]>::to_vec)
    }

    /// Every byte left.
    pub fn rest(&mut self) -> Vec<u8> {
        let n = self.u.len();
        self.u.bytes(n).map_or_else(|_| Vec::new(), <[u8]>::to_vec)
    }
}

/// Writes the byte format [`Input`] reads (for seed inputs).
#[derive(Debug, Default, Clone)]
pub struct Output(pub Vec<u8>);

impl Output {
    /// One byte.
    pub fn byte(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }

    /// A LEB128 varint.
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return self;
            }
            self.0.push(b | 0x80);
        }
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }

    /// Raw bytes, no prefix.
    pub fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self
    }
}

/// A named seed input for a target's corpus.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name in `fuzz/corpus/<target>/`.
    pub name: String,
    /// The input bytes.
    pub data: Vec<u8>,
}

impl Seed {
    /// A seed called `name`.
    pub fn new(name: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            data,
        }
    }
}

/// Parses a structured input the way the fuzz targets do.
pub fn parse<'a, T: arbitrary::Arbitrary<'a>>(data: &'a [u8]) -> T {
    T::arbitrary_take_rest(Unstructured::new(data)).expect("harness inputs parse from any bytes")
}
