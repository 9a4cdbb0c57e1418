//! The secondary's side of a path: taking delegations from the client.

use super::*;

impl Session {
    pub(super) fn on_delegated(&mut self, m: msg::Delegate, ctx: &mut Ctx<'_>) {
        let stream = StreamId(m.stream_id);
        let half = self.streams.source_half(stream);
        half.credit = half.credit.max(m.credit);
        if let Some(resource) = ctx.resources.get(&m.descriptor) {
            self.jobs.push(Job {
                stream,
                range: m.offset..m.offset + m.length,
                fin: m.fin,
                resource: resource.clone(),
            });
            return;
        }
        ctx.events.push_back(Event::Delegated {
            session: self.handle,
            delegation: Delegation {
                id: DelegationId(m.delegation_id),
                path: self.joined_path,
                stream,
                range: m.offset..m.offset + m.length,
                fin: m.fin,
                descriptor: m.descriptor,
            },
        });
    }
}
