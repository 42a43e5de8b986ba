//! Shrinking: from a failing (scenario, seed), a smaller scenario that still fails, so that a
//! failure can be read in a few dozen client operations instead of thousands.
//!
//! A run depends on its whole scenario, so a smaller scenario is a different run: each candidate
//! is tried on the seed that failed and on a few seeds after it (more in the step-bound pass), and
//! the first that fails is kept (the way swarm testers shrink). A first pass walks the candidates: a shorter safety phase,
//! fewer operations per second, viewers and free users among fewer users, a few clients as busy
//! in all as the many were, half the clients, a workload kind or a fault kind turned off, fewer
//! shared documents; before them, the BUGGIFY points that fired are pinned, so every later run
//! has them whatever its seed. A second pass bounds each client's steps (a prefix of the same steps),
//! makes a needed fault (crashes, storms, kills, BUGGIFY) likelier, or turns on one server fault
//! point alone at its likeliest; then the first pass again.

use crate::faults::FaultKind;
use crate::scenario::{Faults, Workload};
use crate::{run, Report, RunConfig, Scenario};

/// Seeds tried per candidate of the first pass: the current one and this many after it.
pub const SHRINK_SEEDS_PER_CANDIDATE: u64 = 4;

/// Seeds tried per candidate of the second pass. A bound on each client's steps keeps a prefix of
/// the run that failed, but a bug that needs a rare interleaving (two clients inserting at one
/// spot at once) shows within fewer steps on fewer seeds, so these candidates get more of them.
pub const SHRINK_STEP_SEEDS_PER_CANDIDATE: u64 = 8;

/// The smallest failing run found.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smaller scenario.
    pub scenario: Scenario,
    /// The seed that fails with it.
    pub seed: u64,
    /// Its report.
    pub report: Report,
    /// Runs the shrink took.
    pub runs: usize,
}

/// The most operations per second a shrink gives one client when it folds others into it.
const BUSY_RATE_MAX: f64 = 20.0;

fn fewer_clients(scenario: &mut Scenario, clients: usize) {
    scenario.clients = clients.max(1);
    scenario.client_hosts = scenario.client_hosts.min(scenario.clients);
    scenario.users = scenario.users.min(scenario.clients);
}

/// Runs held back for the second pass (fewer steps), so that a long first pass leaves it some.
const STEP_PASS_RUNS_MIN: usize = 60;

/// The likeliest a shrink makes a BUGGIFY point, in percent of its opportunities.
const BUGGIFY_PERCENT_MAX: f64 = 25.0;

/// A rate a shrink turns down or up: a fault kind's, or the BUGGIFY points' odds.
#[derive(Clone, Copy)]
enum Knob {
    Kind(FaultKind),
    Buggify,
}

impl Knob {
    /// Every knob: the fault kinds in their order, then BUGGIFY.
    fn all() -> impl Iterator<Item = Knob> {
        FaultKind::ALL.into_iter().map(Knob::Kind).chain([Knob::Buggify])
    }

    /// What a candidate calls it ("no power-loss", "BUGGIFY points four times as likely").
    fn name(self) -> &'static str {
        match self {
            Knob::Kind(kind) => kind.name(),
            Knob::Buggify => "BUGGIFY points",
        }
    }

    fn rate_mut(self, faults: &mut Faults) -> &mut f64 {
        match self {
            Knob::Kind(kind) => kind.rate_mut(faults),
            Knob::Buggify => &mut faults.buggify,
        }
    }

    /// The highest a shrink makes it (`None`: a shrink only turns it off; the others are faults a
    /// bug may need to strike).
    fn max(self) -> Option<f64> {
        match self {
            Knob::Kind(kind) => kind.shrink_max(),
            Knob::Buggify => Some(BUGGIFY_PERCENT_MAX),
        }
    }
}

/// The candidates made from one scenario: each described and changed, leaving out any that
/// changes nothing or repeats an earlier one.
struct Candidates<'a> {
    base: &'a Scenario,
    out: Vec<(String, Scenario)>,
}

impl<'a> Candidates<'a> {
    fn new(base: &'a Scenario) -> Candidates<'a> {
        Candidates { base, out: Vec::new() }
    }

    fn push(&mut self, what: String, change: impl FnOnce(&mut Scenario)) {
        let mut changed = self.base.clone();
        change(&mut changed);
        if changed != *self.base && self.out.iter().all(|(_, other)| *other != changed) {
            self.out.push((what, changed));
        }
    }
}

/// The second pass: a prefix of the same steps. Each client's RNG draws the same operations in
/// the same order, so a bound on its steps keeps the run that failed up to where it stops. It
/// comes after the first pass, because fewer steps per client make fewer clients less likely to
/// fail. A fault that must strike for the bug to show strikes sooner when it is likelier, and a
/// run that fails sooner needs fewer steps and a shorter safety phase (the first pass again).
fn step_candidates(scenario: &Scenario) -> Vec<(String, Scenario)> {
    let steps = scenario
        .steps_per_client_max
        .unwrap_or_else(|| (scenario.ops_per_client_per_s * scenario.safety_s as f64).ceil() as u64 + 1);
    let mut candidates = Candidates::new(scenario);
    for fewer in [steps / 2, steps * 3 / 4, steps.saturating_sub(1)] {
        candidates.push(format!("at most {fewer} steps per client"), |s| {
            s.steps_per_client_max = Some(fewer);
        });
    }
    for knob in Knob::all() {
        let rate = *knob.rate_mut(&mut scenario.faults.clone());
        if let Some(max) = knob.max().filter(|max| rate > 0.0 && rate < *max) {
            let likelier = (rate * 4.0).min(max);
            candidates.push(format!("{} four times as likely", knob.name()), |s| {
                *knob.rate_mut(&mut s.faults) = likelier;
            });
        }
    }
    // One server fault point alone, at its likeliest: the rare path a bug needs (a lost ack
    // makes every mutation's replay a coin toss) then comes within a few steps of one client.
    // Once a point stands alone, the others are not offered again, or the pass would go round.
    let alone = scenario.faults.buggify_points.as_ref().is_some_and(|points| points.len() == 1);
    for point in roomlab_server::FaultPoint::ALL.into_iter().filter(|_| !alone) {
        let name = point.name().strip_prefix("buggify:").expect("points are named buggify:*");
        candidates.push(format!("BUGGIFY just {name}, at {BUGGIFY_PERCENT_MAX} %"), |s| {
            s.faults.buggify = BUGGIFY_PERCENT_MAX;
            s.faults.buggify_points = Some(vec![name.to_string()]);
        });
    }
    candidates.out
}

/// A pass: its candidates for the best run so far, and the seeds each candidate is tried on after
/// the best run's own.
struct Pass<'a> {
    candidates: &'a dyn Fn(&Shrunk) -> Vec<(String, Scenario)>,
    seeds: u64,
}

/// The first pass's candidates for the best run so far: its BUGGIFY points pinned, then
/// [`candidates`].
fn first_pass(best: &Shrunk) -> Vec<(String, Scenario)> {
    let mut list = pinned_points(best);
    list.extend(candidates(&best.scenario));
    list
}

/// The second pass's candidates: [`step_candidates`].
fn second_pass(best: &Shrunk) -> Vec<(String, Scenario)> {
    step_candidates(&best.scenario)
}

/// The server's BUGGIFY points that fired in the best run, pinned so that every later run turns
/// on just these whatever its seed. Without it, a seed tried for a smaller scenario draws its
/// own points, and the one the bug needs (a lost ack, say) is off for half of them.
fn pinned_points(best: &Shrunk) -> Vec<(String, Scenario)> {
    let fired: Vec<String> = (best.report.faults.iter())
        .filter(|(_, count)| **count > 0)
        .filter_map(|(name, _)| name.strip_prefix("buggify:"))
        .filter(|name| crate::scenario::fault_point(name).is_some())
        .map(String::from)
        .collect();
    if best.scenario.faults.buggify <= 0.0 || fired.is_empty() {
        return Vec::new();
    }
    let mut candidates = Candidates::new(&best.scenario);
    let what = format!("BUGGIFY points pinned to those that fired: {}", fired.join(", "));
    candidates.push(what, |s| s.faults.buggify_points = Some(fired));
    candidates.out
}

/// What one step of the first pass may change.
fn candidates(scenario: &Scenario) -> Vec<(String, Scenario)> {
    let mut candidates = Candidates::new(scenario);
    let mut push = |what: String, change: &dyn Fn(&mut Scenario)| candidates.push(what, change);
    push(format!("safety {} s -> {} s", scenario.safety_s, scenario.safety_s / 2), &|s| {
        s.safety_s = (s.safety_s / 2).max(1);
    });
    push("half the operations per second".into(), &|s| {
        s.ops_per_client_per_s = (s.ops_per_client_per_s / 2.0).max(0.05);
    });
    // Roles and plans go by user number (every n-th user a viewer, every m-th on the free plan),
    // so a viewer or a free user among a few clients needs a smaller n or m.
    if scenario.viewer_every > 1 {
        push(format!("{} a viewer", every_nth_user(scenario.viewer_every / 2)), &|s| {
            s.viewer_every /= 2;
        });
    }
    if scenario.free_every > 1 {
        push(format!("{} on the free plan", every_nth_user(scenario.free_every / 2)), &|s| {
            s.free_every /= 2;
        });
    }
    // A few busy clients first, smallest first: every client subscribes on its own, so the
    // client count sets the floor of a run's operations, and keeping the total rate keeps the
    // pressure that made the bug show.
    let mut fewer = 1;
    while fewer < scenario.clients / 2 {
        let rate = scenario.ops_per_client_per_s * scenario.clients as f64 / fewer as f64;
        if rate <= BUSY_RATE_MAX {
            push(format!("clients {} -> {fewer}, as busy in all", scenario.clients), &|s| {
                s.ops_per_client_per_s = rate;
                fewer_clients(s, fewer);
            });
        }
        fewer *= 2;
    }
    push(format!("clients {} -> {}", scenario.clients, scenario.clients / 2), &|s| {
        fewer_clients(s, s.clients / 2);
    });
    push("no swarm redraw".into(), &|s| s.swarm = false);
    let weights = scenario.workload.weights();
    let total: u32 = weights.iter().sum();
    for (index, (name, weight)) in Workload::KINDS.iter().zip(weights).enumerate() {
        // The last kind of work stays: a workload of nothing fails nothing.
        if weight > 0 && total > weight {
            push(format!("no {name} work"), &|s| s.workload.turn_off(index));
        }
    }
    // A fault already off changes nothing, and such candidates are left out.
    for knob in Knob::all() {
        push(format!("no {}", knob.name()), &|s| *knob.rate_mut(&mut s.faults) = 0.0);
    }
    // Last, since it rarely shrinks a run by itself: fewer shared documents make races on one
    // of them likelier, so that a later step may take fewer steps or clients.
    push(format!("shared documents {} -> {}", scenario.shared_docs, scenario.shared_docs / 2), &|s| {
        s.shared_docs = (s.shared_docs / 2).max(1);
    });
    candidates.out
}

/// "every user", "every 2nd user", "every 3rd user", "every 7th user".
fn every_nth_user(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, r) if r != 11 => "st",
        (2, r) if r != 12 => "nd",
        (3, r) if r != 13 => "rd",
        _ => "th",
    };
    match n {
        1 => "every user".into(),
        _ => format!("every {n}{suffix} user"),
    }
}

/// Shrinks a failing run of `scenario` at `seed` (with `mutant` planted, if any) within `runs_max`
/// runs; `progress` hears each accepted step. The result's scenario is named `<name>-shrunk`.
pub fn shrink(
    scenario: &Scenario,
    seed: u64,
    mutant: Option<roomlab_protocol::Mutant>,
    runs_max: usize,
    progress: &mut dyn FnMut(&str, &Report),
) -> Option<Shrunk> {
    let attempt = |scenario: &Scenario, seed: u64| {
        run(&RunConfig { mutant, engine_checks: mutant.is_none(), ..RunConfig::new(scenario.clone(), seed) })
    };
    let first = attempt(scenario, seed);
    if first.passed() {
        return None;
    }
    let mut best = Shrunk { scenario: scenario.clone(), seed, report: first, runs: 1 };
    best.scenario.name = format!("{}-shrunk", scenario.name);
    let first_pass_runs = runs_max.saturating_sub(STEP_PASS_RUNS_MIN).max(runs_max / 2);
    let first = Pass { candidates: &first_pass, seeds: SHRINK_SEEDS_PER_CANDIDATE };
    let second = Pass { candidates: &second_pass, seeds: SHRINK_STEP_SEEDS_PER_CANDIDATE };
    descend(&mut best, &first, first_pass_runs, &attempt, progress);
    if descend(&mut best, &second, runs_max, &attempt, progress) {
        descend(&mut best, &first, runs_max, &attempt, progress);
    }
    Some(best)
}

/// Walks the candidates in passes: each that still fails is taken, and the walk goes on from the
/// same place in the new scenario's list (so the same kind of step is tried again before the
/// next), rather than from the top, which would spend runs again on steps that just failed to
/// reproduce. Passes repeat until one takes nothing or `best.runs` reaches `runs_max`; answers
/// whether any was taken.
fn descend(
    best: &mut Shrunk,
    pass: &Pass,
    runs_max: usize,
    attempt: &dyn Fn(&Scenario, u64) -> Report,
    progress: &mut dyn FnMut(&str, &Report),
) -> bool {
    let mut taken = false;
    loop {
        let mut taken_in_pass = false;
        let (mut list, mut index) = ((pass.candidates)(best), 0);
        while index < list.len() {
            if best.runs >= runs_max {
                return taken;
            }
            match try_seeds(best, &list[index].1, pass.seeds, runs_max, attempt) {
                Some((seed, report)) => {
                    let (what, candidate) = list.swap_remove(index);
                    progress(&what, &report);
                    *best = Shrunk { scenario: candidate, seed, report, runs: best.runs };
                    taken_in_pass = true;
                    list = (pass.candidates)(best);
                }
                None => index += 1,
            }
        }
        taken |= taken_in_pass;
        if !taken_in_pass || best.runs >= runs_max {
            return taken;
        }
    }
}

/// Runs `candidate` on the best run's seed and `seeds` after it; the first seed that fails, with
/// its report.
fn try_seeds(
    best: &mut Shrunk,
    candidate: &Scenario,
    seeds: u64,
    runs_max: usize,
    attempt: &dyn Fn(&Scenario, u64) -> Report,
) -> Option<(u64, Report)> {
    for seed in best.seed..=best.seed + seeds {
        if best.runs >= runs_max {
            return None;
        }
        best.runs += 1;
        let report = attempt(candidate, seed);
        if !report.passed() {
            return Some((seed, report));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_points_that_fired_are_pinned() {
        let mut scenario = Scenario::load("swarm").unwrap();
        scenario.faults.buggify = 2.0;
        let faults =
            [("buggify:ack-lost", 3), ("buggify:room-stall", 0), ("buggify:quota-exact", 2), ("kill", 5)];
        let report =
            Report { faults: faults.map(|(name, n)| (name.to_string(), n)).into(), ..Report::default() };
        let best = Shrunk { scenario: scenario.clone(), seed: 0, report, runs: 1 };
        let pinned = pinned_points(&best);
        assert_eq!(pinned.len(), 1);
        assert_eq!(pinned[0].1.faults.buggify_points, Some(vec!["ack-lost".to_string()]));
        // Pinned already, or BUGGIFY off: nothing to pin.
        let again = Shrunk { scenario: pinned[0].1.clone(), ..best.clone() };
        assert!(pinned_points(&again).is_empty());
        let off = Shrunk {
            scenario: Scenario { faults: Faults { buggify: 0.0, ..scenario.faults }, ..scenario },
            ..best
        };
        assert!(pinned_points(&off).is_empty());
    }

    #[test]
    fn candidates_only_shrink() {
        let scenario = Scenario::load("swarm").unwrap();
        for (what, smaller) in candidates(&scenario) {
            assert!(smaller.clients <= scenario.clients, "{what}");
            assert!(smaller.safety_s <= scenario.safety_s, "{what}");
            let total = |s: &Scenario| s.ops_per_client_per_s * s.clients as f64;
            assert!(total(&smaller) <= total(&scenario) + 1e-9, "{what}");
            assert!(
                smaller.ops_per_client_per_s <= BUSY_RATE_MAX.max(scenario.ops_per_client_per_s),
                "{what}"
            );
            assert!(smaller.client_hosts <= smaller.clients.max(1), "{what}");
        }
        for (what, smaller) in step_candidates(&scenario) {
            let Some(steps) = smaller.steps_per_client_max else {
                assert!(smaller.faults.buggify <= BUGGIFY_PERCENT_MAX, "{what}");
                for knob in Knob::all() {
                    let before = *knob.rate_mut(&mut scenario.faults.clone());
                    let max = knob.max().map_or(before, |max| max.max(before));
                    assert!(*knob.rate_mut(&mut smaller.faults.clone()) <= max, "{what}");
                }
                continue;
            };
            assert!(
                steps < (scenario.ops_per_client_per_s * scenario.safety_s as f64).ceil() as u64 + 1,
                "{what}"
            );
            for (again, s) in step_candidates(&smaller) {
                let likelier = s.faults != smaller.faults;
                assert!(s.steps_per_client_max < Some(steps) || likelier, "{what}, then {again}");
            }
        }
        assert_eq!(every_nth_user(1), "every user");
        assert_eq!(every_nth_user(3), "every 3rd user");
        assert_eq!(every_nth_user(12), "every 12th user");
        assert_eq!(every_nth_user(22), "every 22nd user");
        let mut none = scenario.clone();
        none.steps_per_client_max = Some(0);
        none.faults.buggify = BUGGIFY_PERCENT_MAX;
        for knob in Knob::all() {
            if let Some(max) = knob.max() {
                *knob.rate_mut(&mut none.faults) = max;
            }
        }
        let alone: Vec<_> =
            step_candidates(&none).into_iter().filter_map(|(_, s)| s.faults.buggify_points).collect();
        assert_eq!(alone.len(), roomlab_server::FaultPoint::ALL.len(), "one candidate per point, alone");
        assert!(alone
            .iter()
            .all(|points| points.len() == 1 && crate::scenario::fault_point(&points[0]).is_some()));
        // Once one point stands alone the others are not offered again, so the pass ends.
        none.faults.buggify_points = Some(alone[0].clone());
        assert!(step_candidates(&none).is_empty());
        let mut tiny = scenario.clone();
        tiny.clients = 1;
        tiny.client_hosts = 1;
        tiny.users = 1;
        assert!(candidates(&tiny).iter().all(|(what, _)| !what.starts_with("clients")));
    }
}
