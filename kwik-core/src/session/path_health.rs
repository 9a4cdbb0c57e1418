//! Grading the session's paths (see [`crate::health`]) and telling whoever
//! needs to know: the application (an event), the primary (a client's
//! PathStatus carries the grade, PROTOCOL.md §10.8) and the multi-source
//! scheduler (which gives a Critical secondary no new ranges).
//!
//! Each side grades the connections it holds, where the figures are
//! first-hand; a primary holds only the primary connection, so it learns a
//! secondary path's grade from the client.

use super::*;
use crate::health::{PathHealth, Sample};

impl Session {
    /// Samples every joined connection whose interval has passed and acts
    /// on the grades that changed.
    pub(super) fn check_health(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase != Phase::Active {
            return;
        }
        let mut sampled = Vec::new();
        for (path, conn) in &mut self.conns {
            if !conn.joined || conn.closed || !conn.health.due(ctx.now, conn.quic.rtt()) {
                continue;
            }
            let stats = conn.quic.stats();
            let sample = Sample {
                rtt: conn.quic.rtt(),
                base_rtt: conn.known_base_rtt(),
                sent_packets: stats.path.sent_packets,
                lost_packets: stats.path.lost_packets,
                bytes: stats.udp_tx.bytes + stats.udp_rx.bytes,
                // A silent secondary path is graded Critical; the primary
                // connection's silence degrades the session instead.
                silent: *path != PathId::PRIMARY
                    && self
                        .paths
                        .get(path)
                        .is_some_and(|p| p.state == PathState::Degraded),
            };
            if conn.health.sample(ctx.now, sample) {
                sampled.push((*path, sample));
            }
        }
        if sampled.is_empty() {
            return;
        }
        let best = self
            .conns
            .values()
            .map(|c| c.health.throughput())
            .max()
            .unwrap_or(0) as f64;
        for (path, sample) in sampled {
            let Some(conn) = self.conns.get_mut(&path) else {
                continue;
            };
            if let Some(health) = conn.health.grade(&sample, best) {
                let score = conn.health.score;
                self.set_path_health(path, health, score, ctx);
            }
        }
    }

    /// Records `path`'s new grade, emits the event and, on a client, tells
    /// the primary about a secondary path.
    pub(super) fn set_path_health(
        &mut self,
        path: PathId,
        health: PathHealth,
        score: f64,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(info) = self.paths.get_mut(&path) else {
            return;
        };
        if info.health == health || info.state.is_final() {
            return;
        }
        tracing::debug!(
            target: crate::log::PATHS,
            session = %self.handle,
            role = ?self.role,
            %path,
            from = %info.health,
            to = %health,
            score,
            "path health changed"
        );
        info.health = health;
        ctx.events.push_back(Event::PathHealth {
            session: self.handle,
            path,
            health,
        });
        if self.role == Role::Client && path != PathId::PRIMARY {
            self.report_path(path);
        }
    }

    /// Primary: the grade a client's PathStatus carries, if any.
    pub(super) fn on_reported_health(&mut self, m: &msg::PathStatus, ctx: &mut Ctx<'_>) {
        let health = match msg::PathHealth::try_from(m.health) {
            Ok(msg::PathHealth::Excellent) => PathHealth::Excellent,
            Ok(msg::PathHealth::Good) => PathHealth::Good,
            Ok(msg::PathHealth::Fair) => PathHealth::Fair,
            Ok(msg::PathHealth::Poor) => PathHealth::Poor,
            Ok(msg::PathHealth::Critical) => PathHealth::Critical,
            // Not graded, or a grade this version does not know.
            _ => return,
        };
        let path = PathId(m.path_id);
        if path == PathId::PRIMARY {
            // The primary grades its own connection first-hand.
            return;
        }
        if let Some(info) = self.paths.get_mut(&path) {
            info.throughput = m.throughput;
        }
        self.set_path_health(path, health, f64::NAN, ctx);
    }
}

/// The wire form of a grade.
pub(super) fn wire_health(health: PathHealth) -> msg::PathHealth {
    match health {
        PathHealth::Excellent => msg::PathHealth::Excellent,
        PathHealth::Good => msg::PathHealth::Good,
        PathHealth::Fair => msg::PathHealth::Fair,
        PathHealth::Poor => msg::PathHealth::Poor,
        PathHealth::Critical => msg::PathHealth::Critical,
    }
}
