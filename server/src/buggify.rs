//! BUGGIFY-style fault points inside the server, in the manner of FoundationDB's simulator: places
//! where the code may, when a simulation seed turns the point on, take a legal but unlikely path
//! (a room that stalls before it commits, a broadcast batch delivered in another order, a silence
//! timeout that fires early, a commit the disk refuses inside the engine, an ack lost with its
//! connection), so the rare paths run
//! often. Each point counts how often it fired, so a point that never fires is visible in the
//! run's report.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// A fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultPoint {
    /// The room waits 1 to 300 ms before it handles an input, so its commit (and the ack after it)
    /// is late while inputs queue up behind it.
    RoomStall,
    /// The effects of one input reach their connections in reverse order of connection (each
    /// connection still gets its own frames in order): another legal interleaving of a broadcast.
    BroadcastReorder,
    /// A connection's silence timeout fires at a ping although the peer was heard in time, and
    /// the connection is closed as if it were dead.
    SilenceEarly,
    /// The engine's commit of a mutation fails as if the disk had refused it: the transaction
    /// rolls back and the writer is answered `internal` (the engine's own fault point,
    /// [`roomlab_engine::StorageFaults`]).
    StorageFails,
    /// The connection drops right after the room committed a mutation, before its ack is sent, so
    /// the client learns nothing and must replay the mutation on its next connection, where it
    /// is owed the original answer (docs/PROTOCOL.md mutation.replay.same-answer).
    AckLost,
}

impl FaultPoint {
    /// Every point.
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::RoomStall,
        FaultPoint::BroadcastReorder,
        FaultPoint::SilenceEarly,
        FaultPoint::StorageFails,
        FaultPoint::AckLost,
    ];

    /// The point's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::RoomStall => "buggify:room-stall",
            FaultPoint::BroadcastReorder => "buggify:broadcast-reorder",
            FaultPoint::SilenceEarly => "buggify:silence-early",
            FaultPoint::StorageFails => "buggify:storage-fails",
            FaultPoint::AckLost => "buggify:ack-lost",
        }
    }
}

/// The fault points one run turned on, their odds and what they fired. Share one across server
/// restarts (it lives in the [`crate::ServerConfig`] behind an `Arc`), so counts add up.
#[derive(Debug)]
pub struct Buggify {
    enabled: BTreeSet<FaultPoint>,
    /// Chance, in parts per 10,000, that an enabled point fires at each opportunity.
    odds_per_10k: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rng: ChaCha8Rng,
    fired: BTreeMap<FaultPoint, u64>,
    /// Firings not yet taken by [`Buggify::take_firings`], oldest first (at most
    /// [`FIRINGS_PENDING_MAX`]; older ones are dropped and only counted).
    pending: std::collections::VecDeque<FaultPoint>,
}

/// Firings kept for [`Buggify::take_firings`] between two takes; a host that never takes them
/// keeps only the counts.
pub const FIRINGS_PENDING_MAX: usize = 1024;

impl Buggify {
    /// Points `enabled`, each firing at `percent` of its opportunities, decided by a stream from
    /// `seed`.
    pub fn new(seed: u64, enabled: BTreeSet<FaultPoint>, percent: f64) -> Buggify {
        let fired = enabled.iter().map(|point| (*point, 0)).collect();
        let odds_per_10k = (percent.clamp(0.0, 100.0) * 100.0).round() as u64;
        let rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb066_1f7b_0661_f7b0);
        let state = Mutex::new(State { rng, fired, pending: std::collections::VecDeque::new() });
        Buggify { enabled, odds_per_10k, state }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while the lock was held leaves plain counters behind; carry on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `point` fires now (and counts it). Points not enabled never fire and draw nothing.
    pub fn fire(&self, point: FaultPoint) -> bool {
        if !self.enabled.contains(&point) {
            return false;
        }
        let mut state = self.state();
        let fires = state.rng.next_u64() % 10_000 < self.odds_per_10k;
        if fires {
            *state.fired.entry(point).or_default() += 1;
            if state.pending.len() == FIRINGS_PENDING_MAX {
                state.pending.pop_front();
            }
            state.pending.push_back(point);
        }
        fires
    }

    /// The firings since the last take, oldest first, so a simulation can put each on its trace
    /// at the time it happened.
    pub fn take_firings(&self) -> Vec<FaultPoint> {
        let mut state = self.state();
        if state.pending.is_empty() {
            return Vec::new();
        }
        state.pending.drain(..).collect()
    }

    /// A number in `0..n` from the same stream, for a point that fired.
    pub fn below(&self, n: u64) -> u64 {
        self.state().rng.next_u64() % n.max(1)
    }

    /// How often each enabled point fired, by name (0 for enabled points that never fired).
    pub fn fired(&self) -> BTreeMap<String, u64> {
        self.state().fired.iter().map(|(point, count)| (point.name().to_string(), *count)).collect()
    }
}

/// `(conn, item)` pairs reordered as [`FaultPoint::BroadcastReorder`] does: grouped by connection in
/// reverse order of each connection's first item, each connection's own items kept in order.
pub(crate) fn reorder_by_connection<C: PartialEq + Copy, T>(items: Vec<(C, T)>) -> Vec<(C, T)> {
    let mut order: Vec<C> = Vec::new();
    for (conn, _) in &items {
        if !order.contains(conn) {
            order.push(*conn);
        }
    }
    let mut groups: Vec<(C, Vec<T>)> = order.iter().map(|conn| (*conn, Vec::new())).collect();
    for (conn, item) in items {
        let group = groups.iter_mut().find(|(c, _)| *c == conn).expect("every connection has a group");
        group.1.push(item);
    }
    groups
        .into_iter()
        .rev()
        .flat_map(|(conn, items)| items.into_iter().map(move |item| (conn, item)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fire_only_when_enabled_at_about_their_odds_and_are_counted() {
        let buggify = Buggify::new(7, [FaultPoint::RoomStall].into(), 10.0);
        let fired = (0..10_000).filter(|_| buggify.fire(FaultPoint::RoomStall)).count();
        assert!((800..1200).contains(&fired), "{fired}");
        assert!(!(0..1000).any(|_| buggify.fire(FaultPoint::SilenceEarly)));
        assert_eq!(buggify.fired(), BTreeMap::from([("buggify:room-stall".to_string(), fired as u64)]));
        // Every firing is there to take, once, for the trace; the pending log has its limit.
        let firings = buggify.take_firings();
        assert_eq!(firings.len(), fired.min(FIRINGS_PENDING_MAX));
        assert!(firings.iter().all(|point| *point == FaultPoint::RoomStall));
        assert!(buggify.take_firings().is_empty());
        buggify.fire(FaultPoint::RoomStall);
        assert!(buggify.take_firings().len() <= 1);
    }

    #[test]
    fn a_reordered_batch_keeps_each_connections_order() {
        let items = vec![(1, "a1"), (2, "b1"), (1, "a2"), (3, "c1"), (2, "b2")];
        assert_eq!(reorder_by_connection(items), vec![(3, "c1"), (2, "b1"), (2, "b2"), (1, "a1"), (1, "a2")]);
    }
}
