//! Multi-source transfers on the primary and the jobs that write ranges
//! from a resource (the primary's own share, a secondary's delegations).

use super::*;

impl Session {
    /// Primary: runs every transfer's scheduler and carries out what it
    /// assigns.
    pub(super) fn run_transfers(&mut self, ctx: &mut Ctx<'_>) {
        if self.role != Role::Primary || self.phase != Phase::Active || self.transfers.is_empty() {
            return;
        }
        let mut live = vec![PathView {
            id: PathId::PRIMARY,
            rtt: self.conns[&PathId::PRIMARY].quic.rtt(),
        }];
        live.extend(
            self.paths
                .values()
                .filter(|p| p.takes_new_ranges())
                .map(|p| PathView {
                    id: p.id,
                    rtt: p.rtt,
                }),
        );
        // Higher priorities first (by id among equals), and a path's budget
        // goes to them first: a transfer may only give a path what the
        // transfers of higher priority leave of its budget (§14). Equal
        // priorities do not limit each other.
        let mut order: Vec<(i32, TransferId)> = self
            .transfers
            .iter()
            .map(|(id, t)| (self.streams.priority(t.stream).unwrap_or(0), *id))
            .collect();
        order.sort_by_key(|&(priority, id)| (std::cmp::Reverse(priority), id));
        let mut above: BTreeMap<PathId, u64> = BTreeMap::new();
        let mut level: BTreeMap<PathId, u64> = BTreeMap::new();
        let mut level_priority = None;
        let mut work = Vec::new();
        let mut finished = Vec::new();
        let mut abandoned = Vec::new();
        for (priority, id) in order {
            if level_priority != Some(priority) {
                for (path, owed) in std::mem::take(&mut level) {
                    *above.entry(path).or_default() += owed;
                }
                level_priority = Some(priority);
            }
            let t = self.transfers.get_mut(&id).expect("listed");
            let received = self.ledger.received(t.stream).cloned().unwrap_or_default();
            match self.streams.send_state(t.stream) {
                // The client stopped reading: nothing more is written or
                // delegated (the stop reached every source, §10.4).
                Some(SendState::Stopped(_)) => {
                    abandoned.push(id);
                    continue;
                }
                // StreamComplete releases the send half: the client has it all.
                None => {
                    finished.push((id, t.stream));
                    continue;
                }
                Some(_) if t.complete(&received) => {
                    finished.push((id, t.stream));
                    continue;
                }
                Some(_) => {}
            }
            for assign in t.schedule(ctx.now, &live, &received, &above) {
                work.push((
                    t.stream,
                    t.descriptor.clone(),
                    t.resource.clone(),
                    priority,
                    assign,
                ));
            }
            for p in &live {
                *level.entry(p.id).or_default() += t.owed_on(p.id, &received);
            }
        }
        for (stream, descriptor, resource, priority, a) in work {
            let own = a.path == PathId::PRIMARY
                // The path went away since scheduling: serve it here.
                || self
                    .delegate(a.path, stream, a.range.clone(), a.fin, descriptor, a.urgent)
                    .is_err();
            if own {
                self.push_job(Job {
                    stream,
                    range: a.range,
                    fin: a.fin,
                    resource,
                    urgent: a.urgent,
                    priority,
                });
            }
        }
        for id in abandoned {
            self.transfers.remove(&id);
        }
        for (id, stream) in finished {
            self.transfers.remove(&id);
            tracing::debug!(target: crate::log::DELEGATION, session = %self.handle, transfer = id.0, %stream, "transfer complete");
            ctx.events.push_back(Event::TransferComplete {
                session: self.handle,
                transfer: id,
                stream,
            });
        }
    }

    /// Queues a job behind every job at least as urgent and of at least its
    /// priority: urgent ones first, then by priority (higher first), in
    /// arrival order among equals, so that pumping serves them in that
    /// order.
    pub(super) fn push_job(&mut self, job: Job) {
        let key = job_key(&job);
        let at = self.jobs.partition_point(|j| job_key(j) <= key);
        self.jobs.insert(at, job);
    }

    /// Restores the job order after priorities changed (stable: arrival
    /// order among equals is kept).
    pub(super) fn sort_jobs(&mut self) {
        self.jobs.sort_by_key(job_key);
    }

    /// Writes what the jobs owe, as far as credit and lanes allow.
    pub(super) fn pump_jobs(&mut self) {
        if self.jobs.is_empty() || self.phase != Phase::Active {
            return;
        }
        let mut jobs = std::mem::take(&mut self.jobs);
        let mut short = Vec::new();
        jobs.retain_mut(|job| {
            loop {
                let remaining = job.range.end - job.range.start;
                let want = remaining.min(FEED_CHUNK);
                let mut data = job.resource.read(job.range.start, want as usize);
                if (data.len() as u64) < want {
                    // The resource is shorter than the range.
                    short.push(job.stream);
                    return false;
                }
                let last = want == remaining;
                let fin = job.fin && last;
                match self.write_range(job.stream, job.range.start, &mut data, fin, job.urgent) {
                    Ok(n) => {
                        job.range.start += n as u64;
                        if job.range.is_empty() && (last || !job.fin) {
                            return false;
                        }
                    }
                    Err(WriteError::Blocked) => return true,
                    Err(_) => return false,
                }
            }
        });
        let added = !self.jobs.is_empty();
        jobs.append(&mut self.jobs);
        self.jobs = jobs;
        if added {
            self.sort_jobs();
        }
        if self.role == Role::Secondary {
            // A range this server cannot serve goes back to the primary
            // (§10.4), which re-assigns it, rather than wait for a hedge.
            for stream in short {
                tracing::debug!(target: crate::log::DELEGATION, session = %self.handle, %stream, "resource too short: delegation given back");
                let _ = self.reset(stream, 0);
            }
        }
    }

    /// Primary: serves `resource` over `stream` (opened by this primary)
    /// from this server and every live secondary that holds `descriptor`.
    pub(crate) fn serve(
        &mut self,
        stream: StreamId,
        resource: SharedResource,
        descriptor: Bytes,
        config: TransferConfig,
    ) -> Result<TransferId, PathError> {
        if self.role != Role::Primary {
            return Err(PathError::WrongRole);
        }
        if self.phase != Phase::Active {
            return Err(PathError::SessionClosed);
        }
        if stream.initiator() != Side::Server || self.streams.send_mut(stream).is_none() {
            return Err(PathError::WrongRole);
        }
        let id = TransferId(self.next_transfer);
        self.next_transfer += 1;
        if resource.is_empty() {
            // Only the FIN to send; the transfer completes at once.
            self.push_job(Job {
                stream,
                range: 0..0,
                fin: true,
                resource: resource.clone(),
                urgent: false,
                priority: self.streams.priority(stream).unwrap_or(0),
            });
            self.transfers
                .insert(id, Transfer::new(stream, descriptor, resource, config));
            return Ok(id);
        }
        // Tell the client to acknowledge this stream's progress.
        self.ledger.track(stream);
        self.main_conn().send(Body::Delegate(msg::Delegate {
            path_id: PathId::PRIMARY.0,
            stream_id: stream.0,
            ..Default::default()
        }));
        self.transfers
            .insert(id, Transfer::new(stream, descriptor, resource, config));
        Ok(id)
    }
}

/// A job's place in the queue: urgent first, then higher priority first.
fn job_key(job: &Job) -> (std::cmp::Reverse<bool>, std::cmp::Reverse<i32>) {
    (
        std::cmp::Reverse(job.urgent),
        std::cmp::Reverse(job.priority),
    )
}
