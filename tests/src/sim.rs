//! The discrete-event loop.
//!
//! [`Sim`] owns a virtual clock, the nodes, the links between addresses and
//! a queue of datagrams in flight. Time only moves when there is nothing
//! left to do at the current instant, and then jumps straight to the next
//! event, so a 10-second transfer costs only the CPU time of its packets.
//!
//! # Why it is deterministic
//!
//! * The clock is read exactly once, in [`Sim::new`], to get an `Instant`
//!   base; every later time is that base plus a virtual offset.
//! * Every datagram in flight carries a sequence number from a counter, so
//!   arrivals at the same instant are delivered in send order; due timeouts
//!   fire in node index order. Nothing iterates a hash map.
//! * One seeded `StdRng` drives loss, jitter, duplication and corruption,
//!   drawn in the order datagrams are sent.
//!
//! # Loop semantics
//!
//! After any input to a node (a datagram or a timeout) at time `t`, the
//! simulator calls its [`Node::step`] at `t`, drains
//! [`Node::poll_transmit`] into the links (splitting GSO batches), and
//! caches its [`Node::poll_timeout`]. Nodes that were added or handed out
//! mutably ([`Sim::node_mut`], [`Sim::touch`]) get the same treatment before
//! the next event is processed, so a test can poke a node between runs.
//! Each call to [`Sim::step`] then processes one instant: the minimum of the
//! earliest arrival and the earliest node deadline.
//!
//! # Taps and spoofing
//!
//! [`Sim::tap`] keeps copies of the latest datagrams sent in one direction
//! (what an eavesdropper on that path would capture). A node may put any
//! address in [`Transmit::src`](crate::Transmit::src); a datagram whose
//! source another node owns is *spoofed*, and [`Sim::set_down`] drops it
//! only if the node that really sent it is down (a forged source does not
//! die with the host it names).
//!
//! # Cost
//!
//! Per datagram: one copy into a fresh `BytesMut`, one heap push and pop,
//! two small ordered-map lookups (link, owner). The next deadline is a scan
//! of a `Vec` of cached deadlines, cheap for the handful of nodes a kwik
//! scenario has.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::alloc::Meter;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::link::{Corruption, DropReason, Link, LinkConfig, LinkStats, Verdict};
use crate::node::Node;
use crate::trace::Trace;

/// Index of a node in a [`Sim`], in order of [`Sim::add_node`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

impl NodeId {
    /// The index (also used as node number in the trace).
    pub fn index(self) -> usize {
        self.0
    }
}

/// Why a `run_*` call gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallReason {
    /// The virtual-time limit was reached.
    TimeLimit,
    /// No datagram is in flight and no node has a deadline: nothing can
    /// ever happen again.
    Idle,
}

/// A `run_*` call ended before its condition was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// Why it stopped.
    pub reason: StallReason,
    /// Virtual time elapsed since the simulation start when it stopped.
    pub elapsed: Duration,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            StallReason::TimeLimit => {
                write!(f, "simulation hit its time limit at {:?}", self.elapsed)
            }
            StallReason::Idle => write!(
                f,
                "simulation went idle (no datagram in flight, no deadline) at {:?}",
                self.elapsed
            ),
        }
    }
}

impl std::error::Error for Stalled {}

struct Slot {
    node: Box<dyn Node>,
    addrs: Vec<SocketAddr>,
    /// Cached `poll_timeout`, in ns since the start.
    deadline: Option<u64>,
    dirty: bool,
    /// Heap use inside this node's calls is charged here.
    meter: Option<Meter>,
}

/// Runs `f` under `meter`, if any.
fn metered<T>(meter: Option<Meter>, f: impl FnOnce() -> T) -> T {
    match meter {
        Some(m) => m.run(f),
        None => f(),
    }
}

struct Packet {
    src: SocketAddr,
    dst: SocketAddr,
    link: usize,
    node: usize,
    data: BytesMut,
}

/// Copies of the latest datagrams sent in one direction.
#[derive(Debug)]
struct Tap {
    keep: usize,
    datagrams: VecDeque<Bytes>,
    seen: u64,
}

/// Same-instant iterations after which the loop is declared livelocked.
const LIVELOCK_STEPS: u64 = 1_000_000;

/// A discrete-event network simulation in virtual time. See the module docs.
pub struct Sim {
    start: Instant,
    /// Current virtual time, ns since `start`.
    now: u64,
    rng: StdRng,
    slots: Vec<Slot>,
    any_dirty: bool,
    owners: BTreeMap<SocketAddr, usize>,
    default_link: LinkConfig,
    links: Vec<Link>,
    link_index: BTreeMap<(SocketAddr, SocketAddr), usize>,
    down: BTreeSet<SocketAddr>,
    taps: BTreeMap<(SocketAddr, SocketAddr), Tap>,
    /// In flight: (arrival ns, sequence number, packet slot).
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    packets: Vec<Option<Packet>>,
    free_packets: Vec<usize>,
    seq: u64,
    unroutable: u64,
    trace: Trace,
    buf: Vec<u8>,
    same_instant: u64,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("elapsed", &self.elapsed())
            .field("nodes", &self.slots.len())
            .field("in_flight", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A simulation whose randomness is entirely derived from `seed`.
    ///
    /// Captures `Instant::now()` once as the base of the virtual clock.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Sim {
            start,
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            slots: Vec::new(),
            any_dirty: false,
            owners: BTreeMap::new(),
            default_link: LinkConfig::default(),
            links: Vec::new(),
            link_index: BTreeMap::new(),
            down: BTreeSet::new(),
            taps: BTreeMap::new(),
            queue: BinaryHeap::new(),
            packets: Vec::new(),
            free_packets: Vec::new(),
            seq: 0,
            unroutable: 0,
            trace: Trace::new(start),
            buf: Vec::with_capacity(64 * 1024),
            same_instant: 0,
        }
    }

    // ----- setup -------------------------------------------------------

    /// Adds a node owning `addrs` (datagrams to them are delivered to it).
    ///
    /// # Panics
    /// If an address is already owned by another node.
    pub fn add_node(&mut self, addrs: &[SocketAddr], node: Box<dyn Node>) -> NodeId {
        let idx = self.slots.len();
        for &a in addrs {
            let prev = self.owners.insert(a, idx);
            assert!(prev.is_none(), "address {a} is owned by two nodes");
        }
        self.slots.push(Slot {
            node,
            addrs: addrs.to_vec(),
            deadline: None,
            dirty: true,
            meter: None,
        });
        self.any_dirty = true;
        NodeId(idx)
    }

    /// Charges every heap allocation made inside node `id`'s calls to
    /// `meter` (see [`crate::alloc`]); datagrams delivered to it are copied
    /// inside the meter, so what the node keeps of them is counted.
    pub fn meter(&mut self, id: NodeId, meter: Meter) {
        self.slots[id.0].meter = Some(meter);
    }

    /// Config used for every direction not set explicitly with
    /// [`set_link`](Sim::set_link) / [`set_path`](Sim::set_path). Applies
    /// to existing such links too.
    pub fn set_default_link(&mut self, cfg: LinkConfig) {
        for link in self.links.iter_mut().filter(|l| !l.explicit) {
            link.reconfigure(cfg.clone());
        }
        self.default_link = cfg;
    }

    /// Configures the direction `src → dst`. Counters and queue state of an
    /// existing link are kept.
    pub fn set_link(&mut self, src: SocketAddr, dst: SocketAddr, cfg: LinkConfig) {
        match self.link_index.get(&(src, dst)) {
            Some(&i) => {
                self.links[i].explicit = true;
                self.links[i].reconfigure(cfg);
            }
            None => {
                self.link_index.insert((src, dst), self.links.len());
                self.links.push(Link::new(cfg, true));
            }
        }
    }

    /// Configures both directions between `a` and `b` with the same config
    /// (each direction has its own queue and counters).
    pub fn set_path(&mut self, a: SocketAddr, b: SocketAddr, cfg: LinkConfig) {
        self.set_link(a, b, cfg.clone());
        self.set_link(b, a, cfg);
    }

    /// Takes `addr` down (`true`) or back up (`false`) from now on:
    /// datagrams sent from or to it are dropped, and so are those already in
    /// flight towards it when they arrive. Counted as `dropped_blackhole`.
    pub fn set_down(&mut self, addr: SocketAddr, down: bool) {
        if down {
            self.down.insert(addr);
        } else {
            self.down.remove(&addr);
        }
    }

    /// Starts keeping copies of the latest `keep` datagrams sent from `src`
    /// to `dst` (captured as they are sent, before the link may drop them).
    /// Tapping a direction again changes how many are kept.
    pub fn tap(&mut self, src: SocketAddr, dst: SocketAddr, keep: usize) {
        let tap = self.taps.entry((src, dst)).or_insert_with(|| Tap {
            keep,
            datagrams: VecDeque::new(),
            seen: 0,
        });
        tap.keep = keep;
        while tap.datagrams.len() > keep {
            tap.datagrams.pop_front();
        }
    }

    /// The datagrams a [`tap`](Sim::tap) on `src → dst` kept, oldest first
    /// (empty if the direction is not tapped).
    pub fn tapped(&self, src: SocketAddr, dst: SocketAddr) -> Vec<Bytes> {
        self.taps
            .get(&(src, dst))
            .map_or_else(Vec::new, |t| t.datagrams.iter().cloned().collect())
    }

    /// How many datagrams a tap on `src → dst` has seen in all.
    pub fn tapped_count(&self, src: SocketAddr, dst: SocketAddr) -> u64 {
        self.taps.get(&(src, dst)).map_or(0, |t| t.seen)
    }

    /// Stops tapping `src → dst` and returns what the tap kept.
    pub fn untap(&mut self, src: SocketAddr, dst: SocketAddr) -> Vec<Bytes> {
        self.taps
            .remove(&(src, dst))
            .map_or_else(Vec::new, |t| t.datagrams.into())
    }

    /// Whether `addr` is currently down.
    pub fn is_down(&self, addr: SocketAddr) -> bool {
        self.down.contains(&addr)
    }

    // ----- access ------------------------------------------------------

    /// The node `id`, downcast to its concrete type.
    ///
    /// # Panics
    /// If `id` is unknown or the node is not a `T`.
    pub fn node<T: Node>(&self, id: NodeId) -> &T {
        let any: &dyn Any = &*self.slots[id.0].node;
        any.downcast_ref::<T>()
            .unwrap_or_else(|| panic!("node {} is not a {}", id.0, std::any::type_name::<T>()))
    }

    /// The node `id`, mutably, downcast to its concrete type. Marks it
    /// touched: it is stepped and drained before the next event.
    ///
    /// # Panics
    /// If `id` is unknown or the node is not a `T`.
    pub fn node_mut<T: Node>(&mut self, id: NodeId) -> &mut T {
        self.touch(id);
        let any: &mut dyn Any = &mut *self.slots[id.0].node;
        any.downcast_mut::<T>()
            .unwrap_or_else(|| panic!("node {} is not a {}", id.0, std::any::type_name::<T>()))
    }

    /// Makes the simulator step, drain and re-poll node `id` before the next
    /// event (needed after changing it from outside).
    pub fn touch(&mut self, id: NodeId) {
        self.slots[id.0].dirty = true;
        self.any_dirty = true;
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.slots.len()
    }

    /// Addresses owned by node `id`.
    pub fn addrs(&self, id: NodeId) -> &[SocketAddr] {
        &self.slots[id.0].addrs
    }

    /// True if every node reports [`Node::done`].
    pub fn all_done(&self) -> bool {
        self.slots.iter().all(|s| s.node.done())
    }

    /// The `Instant` virtual time 0 maps to.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.instant(self.now)
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The trace, mutably (to switch datagram recording on, add lines…).
    pub fn trace_mut(&mut self) -> &mut Trace {
        &mut self.trace
    }

    /// Counters of the direction `src → dst` (zero if it never carried
    /// anything).
    pub fn link_stats(&self, src: SocketAddr, dst: SocketAddr) -> LinkStats {
        self.link_index
            .get(&(src, dst))
            .map(|&i| self.links[i].stats)
            .unwrap_or_default()
    }

    /// Counters of every direction that exists, ordered by (src, dst).
    pub fn all_link_stats(&self) -> Vec<(SocketAddr, SocketAddr, LinkStats)> {
        self.link_index
            .iter()
            .map(|(&(s, d), &i)| (s, d, self.links[i].stats))
            .collect()
    }

    /// Sum of the counters of every direction.
    pub fn total_link_stats(&self) -> LinkStats {
        let mut total = LinkStats::default();
        for link in &self.links {
            total.accumulate(&link.stats);
        }
        total
    }

    /// Datagrams sent to an address no node owns (dropped).
    pub fn unroutable(&self) -> u64 {
        self.unroutable
    }

    /// Datagrams currently in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    // ----- running -----------------------------------------------------

    /// Processes the next instant: every arrival due then (in send order),
    /// then every due timeout (in node index order). Returns `false` if
    /// nothing is left to do (no datagram in flight, no deadline).
    ///
    /// # Panics
    /// If a million iterations happen without time advancing (a node keeps
    /// asking to be woken in the past).
    pub fn step(&mut self) -> bool {
        self.settle();
        let Some(next) = self.next_event_ns() else {
            return false;
        };
        let t = next.max(self.now);
        if t == self.now {
            self.same_instant += 1;
            assert!(
                self.same_instant < LIVELOCK_STEPS,
                "livelock: {LIVELOCK_STEPS} iterations at {:?} without time advancing",
                self.elapsed()
            );
        } else {
            self.same_instant = 0;
            self.now = t;
        }
        while let Some(&Reverse((at, _, pkt))) = self.queue.peek() {
            if at > t {
                break;
            }
            self.queue.pop();
            let packet = self.packets[pkt]
                .take()
                .expect("queued packet slot is empty");
            self.free_packets.push(pkt);
            self.deliver(packet);
        }
        for i in 0..self.slots.len() {
            if self.slots[i].deadline.is_some_and(|d| d <= t) {
                let now = self.instant(t);
                let slot = &mut self.slots[i];
                metered(slot.meter, || slot.node.handle_timeout(now));
                self.after_input(i);
            }
        }
        true
    }

    /// Runs every event up to and including virtual time `deadline`
    /// (measured from the start), then sets the clock to `deadline` if it
    /// is later than now.
    pub fn run_until(&mut self, deadline: Duration) {
        let end = nanos(deadline);
        loop {
            self.settle();
            match self.next_event_ns() {
                Some(t) if t <= end => {
                    self.step();
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
    }

    /// Runs for `d` of virtual time from now.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.elapsed() + d);
    }

    /// Runs while `cond(self)` holds, for at most `limit` of virtual time
    /// from now. Returns the virtual time elapsed since the simulation start
    /// when `cond` became false (checked before each instant).
    pub fn run_while(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Result<Duration, Stalled> {
        let end = self.now.saturating_add(nanos(limit));
        loop {
            self.settle();
            if !cond(self) {
                return Ok(self.elapsed());
            }
            match self.next_event_ns() {
                None => {
                    return Err(Stalled {
                        reason: StallReason::Idle,
                        elapsed: self.elapsed(),
                    });
                }
                Some(t) if t > end => {
                    self.now = self.now.max(end);
                    return Err(Stalled {
                        reason: StallReason::TimeLimit,
                        elapsed: self.elapsed(),
                    });
                }
                Some(_) => {
                    self.step();
                }
            }
        }
    }

    /// Runs until every node is [`done`](Node::done), for at most `limit` of
    /// virtual time from now. Returns the virtual time elapsed since the
    /// simulation start at completion.
    pub fn run_until_done(&mut self, limit: Duration) -> Result<Duration, Stalled> {
        self.run_while(limit, |sim| !sim.all_done())
    }

    // ----- internals ---------------------------------------------------

    fn instant(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    fn to_ns(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.start))
    }

    fn next_event_ns(&self) -> Option<u64> {
        let arrival = self.queue.peek().map(|r| r.0.0);
        let deadline = self.slots.iter().filter_map(|s| s.deadline).min();
        match (arrival, deadline) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        }
    }

    /// Steps, drains and re-polls every touched node, in index order.
    fn settle(&mut self) {
        if !self.any_dirty {
            return;
        }
        self.any_dirty = false;
        for i in 0..self.slots.len() {
            if std::mem::take(&mut self.slots[i].dirty) {
                self.after_input(i);
            }
        }
    }

    /// Application step, transmit drain and deadline refresh of node `i`.
    fn after_input(&mut self, i: usize) {
        let now = self.instant(self.now);
        self.trace.set_current(i);
        let slot = &mut self.slots[i];
        metered(slot.meter, || slot.node.step(now, &mut self.trace));
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            buf.clear();
            let slot = &mut self.slots[i];
            let Some(tx) = metered(slot.meter, || slot.node.poll_transmit(now, &mut buf)) else {
                break;
            };
            let seg = tx.segment_size.unwrap_or(buf.len()).max(1);
            for datagram in buf.chunks(seg) {
                self.send_datagram(i, tx.src, tx.dst, datagram);
            }
        }
        self.buf = buf;
        let slot = &mut self.slots[i];
        let deadline = metered(slot.meter, || slot.node.poll_timeout());
        self.slots[i].deadline = deadline.map(|d| self.to_ns(d));
    }

    fn link_for(&mut self, src: SocketAddr, dst: SocketAddr) -> usize {
        if let Some(&i) = self.link_index.get(&(src, dst)) {
            return i;
        }
        let i = self.links.len();
        self.links.push(Link::new(self.default_link.clone(), false));
        self.link_index.insert((src, dst), i);
        i
    }

    fn send_datagram(&mut self, from: usize, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        let len = data.len();
        if !self.taps.is_empty()
            && let Some(tap) = self.taps.get_mut(&(src, dst))
        {
            tap.seen += 1;
            if tap.keep > 0 {
                if tap.datagrams.len() >= tap.keep {
                    tap.datagrams.pop_front();
                }
                tap.datagrams.push_back(Bytes::copy_from_slice(data));
            }
        }
        let Some(&to) = self.owners.get(&dst) else {
            self.unroutable += 1;
            if self.trace.datagrams_enabled() {
                self.trace.record_at(
                    self.elapsed(),
                    from,
                    format_args!("drop:noroute {src}>{dst} {len}"),
                );
            }
            return;
        };
        let li = self.link_for(src, dst);
        let verdict =
            if !self.down.is_empty() && (self.sender_down(from, src) || self.down.contains(&dst)) {
                let stats = &mut self.links[li].stats;
                stats.sent += 1;
                stats.bytes_sent += len as u64;
                stats.dropped_blackhole += 1;
                Verdict::Drop(DropReason::Blackhole)
            } else {
                self.links[li].send(self.now, len, &mut self.rng)
            };
        if self.trace.datagrams_enabled() {
            let at = self.elapsed();
            match verdict {
                Verdict::Drop(r) => self.trace.record_at(
                    at,
                    from,
                    format_args!("drop:{} {src}>{dst} {len}", r.as_str()),
                ),
                Verdict::Deliver { .. } => {
                    self.trace
                        .record_at(at, from, format_args!("tx {src}>{dst} {len}"))
                }
            }
        }
        if let Verdict::Deliver {
            at,
            duplicate_at,
            corrupt,
            duplicate_corrupt,
        } = verdict
        {
            self.enqueue(at, src, dst, li, to, data, corrupt);
            if let Some(at) = duplicate_at {
                self.enqueue(at, src, dst, li, to, data, duplicate_corrupt);
            }
        }
    }

    /// Whether a datagram that node `from` sends with source `src` leaves a
    /// host that is down: `src` itself, unless the node spoofs an address
    /// another node owns (then the sender's own addresses count).
    fn sender_down(&self, from: usize, src: SocketAddr) -> bool {
        match self.owners.get(&src) {
            Some(&owner) if owner != from => {
                self.slots[from].addrs.iter().any(|a| self.down.contains(a))
            }
            _ => self.down.contains(&src),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        at: u64,
        src: SocketAddr,
        dst: SocketAddr,
        link: usize,
        node: usize,
        data: &[u8],
        corrupt: Corruption,
    ) {
        let mut data = BytesMut::from(data);
        if !corrupt.is_none() {
            corrupt.apply(&mut data);
        }
        let packet = Packet {
            src,
            dst,
            link,
            node,
            data,
        };
        let slot = match self.free_packets.pop() {
            Some(s) => {
                self.packets[s] = Some(packet);
                s
            }
            None => {
                self.packets.push(Some(packet));
                self.packets.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn deliver(&mut self, p: Packet) {
        let len = p.data.len();
        if !self.down.is_empty() && self.down.contains(&p.dst) {
            self.links[p.link].stats.dropped_blackhole += 1;
            if self.trace.datagrams_enabled() {
                self.trace.record_at(
                    self.elapsed(),
                    p.node,
                    format_args!("drop:down {}>{} {len}", p.src, p.dst),
                );
            }
            return;
        }
        let stats = &mut self.links[p.link].stats;
        stats.delivered += 1;
        stats.bytes_delivered += len as u64;
        if self.trace.datagrams_enabled() {
            self.trace.record_at(
                self.elapsed(),
                p.node,
                format_args!("rx {}>{} {len}", p.src, p.dst),
            );
        }
        let now = self.instant(self.now);
        let slot = &mut self.slots[p.node];
        match slot.meter {
            Some(m) => m.run(|| {
                let data = BytesMut::from(&p.data[..]);
                slot.node.receive(now, p.dst, p.src, data);
            }),
            None => slot.node.receive(now, p.dst, p.src, p.data),
        }
        self.after_input(p.node);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
