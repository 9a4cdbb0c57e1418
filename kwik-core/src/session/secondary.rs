//! The secondary's side of a path: taking delegations from the client, and
//! keeping what it was asked to write — and only that — until it is written.
//!
//! A secondary holds state for a stream only while it has delegated bytes
//! to write: the delegation creates the stream's sending half, writing the
//! last delegated byte frees it. Messages about other streams are ignored,
//! so a client cannot grow the table by naming fresh stream ids, and the
//! number of outstanding delegations is bounded
//! ([`TransportConfig::max_delegations`]).
//!
//! A delegation carries the stream's priority on the primary (§14): it
//! becomes the stream's priority here, so the ranges go out on a lane of
//! that priority and queued jobs are written in priority order.

use super::*;

impl Session {
    pub(super) fn on_delegated(
        &mut self,
        m: msg::Delegate,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let stream = StreamId(m.stream_id);
        if stream.initiator() != Side::Server {
            return Err(violation(format!("delegation of client stream {stream}")));
        }
        if m.length == 0 && !m.fin {
            return Ok(()); // nothing to write
        }
        // A delegation of a served resource is a job; one for the
        // application is a granted range (adjacent ones merge) or a FIN.
        let ranges: usize = self
            .serving
            .values()
            .map(|g| g.ranges.range_count() + usize::from(g.fin.is_some()))
            .sum();
        let held = self.jobs.len().max(ranges);
        if held >= self.transport.max_delegations {
            return Err(Violation::new(
                ErrorCode::ResourceLimit,
                format!(
                    "more than {} delegations outstanding",
                    self.transport.max_delegations
                ),
            ));
        }
        // `wire::check` bounded the range when the message was decoded.
        let range = m.offset..m.offset + m.length;
        tracing::trace!(target: crate::log::DELEGATION, session = %self.handle, %stream, ?range, fin = m.fin, urgent = m.urgent, priority = m.priority, "delegated");
        self.serving
            .entry(stream)
            .or_default()
            .allow(range.clone(), m.fin);
        let half = self.streams.source_half(stream);
        half.credit = half.credit.max(m.credit);
        // The stream's priority on the primary, at which its ranges are
        // written here (on a lane of that priority, jobs in that order).
        let priority = clamp_priority(m.priority);
        self.reprioritize(stream, priority);
        if let Some(resource) = ctx.resources.get(&m.descriptor) {
            // A range still queued here (a hedge, or a re-assignment, of
            // work this path already holds): written once; if now urgent,
            // that part goes first and the rest stays in line.
            if let Some(i) = self.jobs.iter().position(|j| {
                j.stream == stream
                    && j.range.start <= range.start
                    && range.end <= j.range.end
                    && (j.fin || !m.fin)
            }) {
                if m.urgent && !self.jobs[i].urgent {
                    let job = self.jobs.remove(i);
                    let piece = |r: Range<u64>, fin: bool, urgent: bool| Job {
                        stream,
                        range: r,
                        fin,
                        resource: job.resource.clone(),
                        urgent,
                        priority,
                    };
                    let at_end = range.end == job.range.end;
                    let mut rest = Vec::new();
                    if job.range.start < range.start {
                        rest.push(piece(job.range.start..range.start, false, false));
                    }
                    if !at_end {
                        rest.push(piece(range.end..job.range.end, job.fin, false));
                    }
                    let urgent = piece(range, job.fin && at_end, true);
                    self.jobs.splice(i..i, rest);
                    self.push_job(urgent);
                }
                return Ok(());
            }
            self.push_job(Job {
                stream,
                range,
                fin: m.fin,
                resource: resource.clone(),
                urgent: m.urgent,
                priority,
            });
            return Ok(());
        }
        ctx.events.push_back(Event::Delegated {
            session: self.handle,
            delegation: Delegation {
                id: DelegationId(m.delegation_id),
                path: self.joined_path,
                stream,
                range,
                fin: m.fin,
                descriptor: m.descriptor,
                urgent: m.urgent,
                priority,
            },
        });
        Ok(())
    }

    /// Secondary: `range` (and the FIN after it, if `fin`) of `stream` went
    /// out; once nothing delegated is left, the stream's state goes.
    pub(super) fn wrote_delegated(&mut self, stream: StreamId, range: Range<u64>, fin: bool) {
        let Some(grant) = self.serving.get_mut(&stream) else {
            return;
        };
        grant.ranges.remove(range);
        if fin {
            grant.fin = None;
        }
        if !grant.is_done() {
            return;
        }
        self.serving.remove(&stream);
        let lane = self.streams.send_mut(stream).and_then(|s| s.lane);
        self.streams.free_send(stream);
        if let Some(lane) = lane {
            self.main_conn().lanes.release(lane);
        }
    }
}
