//! The pure scheduler: which stage to judge, start, skip or block next. It owns the ready
//! queue (topological order), `-j`, resource pools, fail-fast / keep-going, and skip and
//! block propagation, and nothing else: no threads, no clock, no I/O. The dispatcher feeds
//! it what happened ([`Scheduler::judged`], [`Scheduler::finished`], ...) and performs the
//! [`Action`]s it returns.

use super::pools::{Pools, Units};
use crate::plan::Reason;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the scheduler needs to know of one stage.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub upstream: Vec<usize>,
    pub downstream: Vec<usize>,
    /// Units the stage takes from each pool while it runs (restores take none).
    pub resources: BTreeMap<String, u32>,
    /// Name of the gate the stage checks, if any (for block reasons).
    pub gate: Option<String>,
}

/// What a judged stage needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Run,
    Restore,
}

/// How a stage settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Ran, restored or up to date, and its gate (if any) passed.
    Ok,
    /// Succeeded but its gate failed: its downstream is blocked.
    GateFailed,
    Failed,
    Skipped,
    Blocked,
}

/// What the dispatcher must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Observe and judge the stage, then call `judged` (or `settled` when it needs nothing).
    Judge(usize),
    /// Start the work on a worker with these pool units; call `finished` when it ends.
    Start {
        stage: usize,
        work: Work,
        units: Units,
    },
    /// The stage will not start (already settled as `Skipped`).
    Skip { stage: usize, reason: Reason },
    /// A gate upstream failed (already settled as `Blocked`).
    Block { stage: usize, reason: Reason },
}

pub struct Scheduler {
    nodes: HashMap<usize, Node>,
    pos: HashMap<usize, usize>,
    jobs: usize,
    keep_going: bool,
    pools: Pools,
    pending_up: HashMap<usize, usize>,
    /// Ready to be judged: (topological position, stage).
    ready: BTreeSet<(usize, usize)>,
    judging: BTreeSet<usize>,
    /// Judged and waiting for a slot.
    runnable: BTreeMap<(usize, usize), Work>,
    running: HashMap<usize, Units>,
    settled: HashMap<usize, Settled>,
    stop: bool,
    interrupted: bool,
}

impl Scheduler {
    /// `order` is a topological order of `nodes` (the selected stages); `pools` maps each
    /// pool to its size.
    pub fn new(
        nodes: HashMap<usize, Node>,
        order: &[usize],
        jobs: usize,
        keep_going: bool,
        pools: &BTreeMap<String, u32>,
    ) -> Scheduler {
        let pos: HashMap<usize, usize> = order
            .iter()
            .filter(|i| nodes.contains_key(i))
            .enumerate()
            .map(|(k, &i)| (i, k))
            .collect();
        let mut pending_up = HashMap::new();
        let mut ready = BTreeSet::new();
        for (&i, n) in &nodes {
            let waiting = n.upstream.iter().filter(|u| nodes.contains_key(u)).count();
            pending_up.insert(i, waiting);
            if waiting == 0 {
                ready.insert((pos[&i], i));
            }
        }
        Scheduler {
            nodes,
            pos,
            jobs: jobs.max(1),
            keep_going,
            pools: Pools::new(pools),
            pending_up,
            ready,
            judging: BTreeSet::new(),
            runnable: BTreeMap::new(),
            running: HashMap::new(),
            settled: HashMap::new(),
            stop: false,
            interrupted: false,
        }
    }

    /// Everything that can happen now, in order. Poll again after feeding results in.
    ///
    /// Stages are judged in topological order, only as far ahead as needed: a judged stage
    /// starts once every stage before it in the order has been judged, and judging stops
    /// when `-j` stages wait judged (a look-ahead, so a freed slot never waits for a judge)
    /// unless an unjudged stage comes before a waiting one. A wide build's first stage thus
    /// starts after one judge instead of after all of them, and the rest are judged while
    /// stages run.
    pub fn poll(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        loop {
            let before = actions.len();
            if self.stop {
                while let Some((_, i)) = self.ready.pop_first() {
                    // With `stop` set every ready stage is skipped (or blocked).
                    if let Some(a) = self.not_started(i) {
                        actions.push(a);
                    }
                }
                for ((_, i), _) in std::mem::take(&mut self.runnable) {
                    let reason = self.stop_reason();
                    self.settle(i, Settled::Skipped);
                    actions.push(Action::Skip { stage: i, reason });
                }
                // Settling may have readied more stages: they are skipped too.
                if self.ready.is_empty() {
                    return actions;
                }
                continue;
            }
            self.start_in_order(&mut actions);
            while let Some(&(_, i)) = self.ready.first() {
                if !self.wants_judging() {
                    break;
                }
                self.ready.pop_first();
                match self.not_started(i) {
                    Some(a) => actions.push(a),
                    None => {
                        self.judging.insert(i);
                        actions.push(Action::Judge(i));
                    }
                }
            }
            // Judges come back (`judged`, `finished`) before the next poll; skips and
            // blocks may have readied or unblocked stages: look again.
            if !self.judging.is_empty() || actions.len() == before {
                return actions;
            }
        }
    }

    /// Whether to judge the next ready stage now: fewer than `-j` stages are judged and
    /// waiting (or being judged), or it comes before one that waits.
    fn wants_judging(&self) -> bool {
        let ahead = self.judging.len() + self.runnable.len();
        if ahead < self.jobs {
            return true;
        }
        match (self.ready.first(), self.runnable.first_key_value()) {
            (Some(&(r, _)), Some((&(w, _), _))) => r < w,
            _ => false,
        }
    }

    /// Start judged stages in order, until the slots are full, among those that precede
    /// every stage not judged yet: a stage whose resources are taken is passed over.
    /// (Copying the whole runnable set on each poll made a wide build quadratic.)
    fn start_in_order(&mut self, actions: &mut Vec<Action>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let limit = self.ready.first().map(|&(pos, _)| pos);
        let mut after: Option<(usize, usize)> = None;
        while self.running.len() < self.jobs {
            let next = match after {
                None => self.runnable.iter().next(),
                Some(k) => self.runnable.range((Excluded(k), Unbounded)).next(),
            };
            let Some((key, work)) = next.map(|(k, w)| (*k, *w)) else {
                break;
            };
            if limit.is_some_and(|l| key.0 > l) {
                break;
            }
            after = Some(key);
            let i = key.1;
            let want = match work {
                Work::Run => self.nodes[&i].resources.clone(),
                Work::Restore => BTreeMap::new(),
            };
            let Some(units) = self.pools.try_take(&want) else {
                continue;
            };
            self.runnable.remove(&key);
            self.running.insert(i, units.clone());
            actions.push(Action::Start {
                stage: i,
                work,
                units,
            });
        }
    }

    /// A ready stage that must not start, and why (upstream failed, skipped or blocked, or
    /// the build is stopping). Settles it.
    fn not_started(&mut self, i: usize) -> Option<Action> {
        let name = |s: &Scheduler, u: usize| s.nodes[&u].name.clone();
        let mut verdict = None;
        for &u in &self.nodes[&i].upstream {
            match self.settled.get(&u) {
                Some(Settled::Failed) => {
                    verdict = Some((
                        Settled::Skipped,
                        Reason::UpstreamFailed {
                            stage: name(self, u),
                        },
                    ));
                }
                Some(Settled::Skipped) => {
                    verdict = Some((
                        Settled::Skipped,
                        Reason::UpstreamNotBuilt {
                            stage: name(self, u),
                        },
                    ));
                }
                Some(Settled::Blocked) => {
                    verdict = Some((
                        Settled::Blocked,
                        Reason::UpstreamBlocked {
                            stage: name(self, u),
                        },
                    ));
                }
                Some(Settled::GateFailed) => {
                    let gate = self.nodes[&u].gate.clone().unwrap_or_default();
                    verdict = Some((
                        Settled::Blocked,
                        Reason::GateFailed {
                            gate,
                            stage: name(self, u),
                        },
                    ));
                }
                _ => continue,
            }
            break;
        }
        if verdict.is_none() && self.stop {
            verdict = Some((Settled::Skipped, self.stop_reason()));
        }
        let (how, reason) = verdict?;
        self.settle(i, how);
        Some(match how {
            Settled::Blocked => Action::Block { stage: i, reason },
            _ => Action::Skip { stage: i, reason },
        })
    }

    fn stop_reason(&self) -> Reason {
        if self.interrupted {
            Reason::BuildInterrupted
        } else {
            Reason::BuildStopped
        }
    }

    /// The judge's answer for a stage from `Action::Judge`: it needs `work`.
    pub fn judged(&mut self, i: usize, work: Work) {
        self.judging.remove(&i);
        self.runnable.insert((self.pos[&i], i), work);
    }

    /// A stage from `Action::Judge` needs nothing (up to date or frozen), or a stage from
    /// `Action::Start` ended. Gives back its units and releases its downstream.
    pub fn finished(&mut self, i: usize, how: Settled) {
        self.judging.remove(&i);
        if let Some(units) = self.running.remove(&i) {
            self.pools.give_back(units);
        }
        if how == Settled::Failed && !self.keep_going {
            self.stop = true;
        }
        self.settle(i, how);
    }

    /// A started stage must run after all (its cache entry was bad): back in the queue.
    pub fn retry_as_run(&mut self, i: usize) {
        if let Some(units) = self.running.remove(&i) {
            self.pools.give_back(units);
        }
        self.runnable.insert((self.pos[&i], i), Work::Run);
    }

    /// Ctrl-C / SIGTERM: start nothing more; what has not started is skipped.
    pub fn interrupt(&mut self) {
        self.stop = true;
        self.interrupted = true;
    }

    fn settle(&mut self, i: usize, how: Settled) {
        self.settled.insert(i, how);
        for d in self.nodes[&i].downstream.clone() {
            if let Some(n) = self.pending_up.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    self.ready.insert((self.pos[&d], d));
                }
            }
        }
    }

    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Every stage has settled.
    pub fn is_done(&self) -> bool {
        self.settled.len() == self.nodes.len()
    }

    /// Nothing runs and nothing can start, yet stages wait: cannot happen when every
    /// request fits its pool (validation checks that).
    pub fn is_stuck(&self) -> bool {
        self.running.is_empty()
            && self.ready.is_empty()
            && self.judging.is_empty()
            && !self.runnable.is_empty()
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    pub fn gate_failed(&self) -> bool {
        self.settled.values().any(|s| *s == Settled::GateFailed)
    }

    pub fn settled(&self, i: usize) -> Option<Settled> {
        self.settled.get(&i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake executor: judges every stage as `Run` (or as the test says), and completes
    /// started stages in the order the test asks, recording what ran alongside what.
    struct Fake {
        s: Scheduler,
        log: Vec<String>,
        running: Vec<usize>,
        max_parallel: usize,
        fail: BTreeSet<usize>,
        gate_fail: BTreeSet<usize>,
        fresh: BTreeSet<usize>,
        names: Vec<String>,
    }

    /// Stages named by letters; `edges` as (upstream, downstream).
    fn graph(n: usize, edges: &[(usize, usize)]) -> HashMap<usize, Node> {
        let mut nodes: HashMap<usize, Node> = (0..n)
            .map(|i| {
                (
                    i,
                    Node {
                        name: ((b'a' + i as u8) as char).to_string(),
                        gate: Some(format!("g{i}")),
                        ..Default::default()
                    },
                )
            })
            .collect();
        for &(u, d) in edges {
            nodes.get_mut(&d).unwrap().upstream.push(u);
            nodes.get_mut(&u).unwrap().downstream.push(d);
        }
        nodes
    }

    impl Fake {
        fn new(
            nodes: HashMap<usize, Node>,
            jobs: usize,
            keep_going: bool,
            pools: &[(&str, u32)],
        ) -> Fake {
            let n = nodes.len();
            let order: Vec<usize> = (0..n).collect();
            let pools = pools.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let names = (0..n).map(|i| nodes[&i].name.clone()).collect();
            Fake {
                s: Scheduler::new(nodes, &order, jobs, keep_going, &pools),
                log: vec![],
                running: vec![],
                max_parallel: 0,
                fail: BTreeSet::new(),
                gate_fail: BTreeSet::new(),
                fresh: BTreeSet::new(),
                names,
            }
        }

        /// Perform actions until something is running or all is done.
        fn pump(&mut self) {
            loop {
                let actions = self.s.poll();
                if actions.is_empty() {
                    return;
                }
                for a in actions {
                    match a {
                        Action::Judge(i) if self.fresh.contains(&i) => {
                            self.log.push(format!("fresh {}", self.names[i]));
                            self.s.finished(i, Settled::Ok);
                        }
                        Action::Judge(i) => self.s.judged(i, Work::Run),
                        Action::Start { stage, .. } => {
                            self.log.push(format!("start {}", self.names[stage]));
                            self.running.push(stage);
                            self.max_parallel = self.max_parallel.max(self.running.len());
                        }
                        Action::Skip { stage, reason } => self
                            .log
                            .push(format!("skip {} ({reason})", self.names[stage])),
                        Action::Block { stage, reason } => self
                            .log
                            .push(format!("block {} ({reason})", self.names[stage])),
                    }
                }
            }
        }

        /// Complete the oldest running stage.
        fn complete_first(&mut self) -> bool {
            if self.running.is_empty() {
                return false;
            }
            let i = self.running.remove(0);
            let how = if self.fail.contains(&i) {
                Settled::Failed
            } else if self.gate_fail.contains(&i) {
                Settled::GateFailed
            } else {
                Settled::Ok
            };
            self.log.push(format!("end {}", self.names[i]));
            self.s.finished(i, how);
            true
        }

        fn run_all(mut self) -> Fake {
            self.pump();
            while self.complete_first() {
                self.pump();
            }
            assert!(self.s.is_done(), "not done: {:?}", self.log);
            self
        }
    }

    #[test]
    fn a_wide_build_starts_after_one_judge_and_judges_the_rest_while_it_runs() {
        let mut s = Scheduler::new(
            graph(6, &[]),
            &[0, 1, 2, 3, 4, 5],
            1,
            false,
            &BTreeMap::new(),
        );
        // One judge, then its start, then one look-ahead judge: not six judges first.
        assert_eq!(s.poll(), [Action::Judge(0)]);
        s.judged(0, Work::Run);
        let acts = s.poll();
        assert!(
            matches!(acts[0], Action::Start { stage: 0, .. }),
            "{acts:?}"
        );
        assert_eq!(acts[1..], [Action::Judge(1)]);
        s.judged(1, Work::Run);
        assert_eq!(s.poll(), []);
        // An up-to-date stage judged ahead frees nothing: the next one is judged at once.
        s.finished(0, Settled::Ok);
        let acts = s.poll();
        assert!(
            matches!(acts[0], Action::Start { stage: 1, .. }),
            "{acts:?}"
        );
        assert_eq!(acts[1..], [Action::Judge(2)]);
        s.finished(2, Settled::Ok);
        assert_eq!(s.poll(), [Action::Judge(3)]);
    }

    #[test]
    fn a_stage_readied_later_but_earlier_in_the_order_is_judged_before_a_waiting_one_starts() {
        // a -> b; c, d independent, later in the order. -j1: while a runs, c is judged ahead.
        // When a ends, b (before c) is judged and starts first.
        let mut s = Scheduler::new(
            graph(4, &[(0, 1)]),
            &[0, 1, 2, 3],
            1,
            false,
            &BTreeMap::new(),
        );
        assert_eq!(s.poll(), [Action::Judge(0)]);
        s.judged(0, Work::Run);
        assert_eq!(s.poll().len(), 2); // start a, judge c
        s.judged(2, Work::Run);
        s.finished(0, Settled::Ok);
        assert_eq!(s.poll(), [Action::Judge(1)]);
        s.judged(1, Work::Run);
        let acts = s.poll();
        assert!(
            matches!(acts[..], [Action::Start { stage: 1, .. }]),
            "{acts:?}"
        );
    }

    #[test]
    fn runs_in_topological_order_one_at_a_time_with_j1() {
        // a -> b -> d, a -> c -> d
        let f = Fake::new(graph(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]), 1, false, &[]).run_all();
        assert_eq!(
            f.log,
            [
                "start a", "end a", "start b", "end b", "start c", "end c", "start d", "end d"
            ]
        );
        assert_eq!(f.max_parallel, 1);
    }

    #[test]
    fn a_stage_readied_by_a_finish_goes_before_a_later_independent_one() {
        // a -> b; c independent and later in the order: with -j1, b runs before c.
        let f = Fake::new(graph(3, &[(0, 1)]), 1, false, &[]).run_all();
        assert_eq!(
            f.log,
            ["start a", "end a", "start b", "end b", "start c", "end c"]
        );
    }

    #[test]
    fn runs_independent_stages_side_by_side_up_to_j() {
        let f = Fake::new(graph(5, &[]), 2, false, &[]).run_all();
        assert_eq!(f.max_parallel, 2);
        assert_eq!(&f.log[..3], ["start a", "start b", "end a"]);
        let f = Fake::new(graph(5, &[]), 8, false, &[]).run_all();
        assert_eq!(f.max_parallel, 5);
    }

    #[test]
    fn pools_limit_what_runs_together_and_hand_out_distinct_units() {
        let mut nodes = graph(3, &[]);
        for n in nodes.values_mut() {
            n.resources.insert("gpu".into(), 1);
        }
        let mut f = Fake::new(nodes, 8, false, &[("gpu", 2)]);
        let mut units = vec![];
        loop {
            let acts = f.s.poll();
            if acts.is_empty() {
                break;
            }
            for a in acts {
                match a {
                    Action::Judge(i) => f.s.judged(i, Work::Run),
                    Action::Start {
                        stage, units: u, ..
                    } => {
                        units.push((stage, u["gpu"].clone()));
                    }
                    _ => {}
                }
            }
        }
        // Two GPUs: two stages start, on devices 0 and 1; the third waits.
        assert_eq!(units, [(0, vec![0]), (1, vec![1])]);
        f.s.finished(1, Settled::Ok);
        let acts = f.s.poll();
        assert_eq!(
            acts,
            [Action::Start {
                stage: 2,
                work: Work::Run,
                units: BTreeMap::from([("gpu".to_string(), vec![1])]),
            }]
        );
    }

    #[test]
    fn restores_take_no_pool_units() {
        let mut nodes = graph(2, &[]);
        for n in nodes.values_mut() {
            n.resources.insert("gpu".into(), 1);
        }
        let mut s = Scheduler::new(
            nodes,
            &[0, 1],
            4,
            false,
            &BTreeMap::from([("gpu".into(), 1)]),
        );
        for a in s.poll() {
            if let Action::Judge(i) = a {
                s.judged(i, Work::Restore);
            }
        }
        let started: Vec<_> = s
            .poll()
            .into_iter()
            .filter(|a| matches!(a, Action::Start { .. }))
            .collect();
        assert_eq!(started.len(), 2);
    }

    #[test]
    fn a_failure_stops_the_build_and_skips_the_rest() {
        // a fails; b (independent, not started yet with -j1) and c (downstream) are skipped.
        let mut f = Fake::new(graph(3, &[(0, 2)]), 1, false, &[]);
        f.fail.insert(0);
        let f = f.run_all();
        assert_eq!(
            f.log,
            [
                "start a",
                "end a",
                "skip c (upstream failed: a)",
                "skip b (build stopped after a failure)"
            ]
        );
        assert_eq!(f.s.settled(1), Some(Settled::Skipped));
    }

    #[test]
    fn keep_going_builds_everything_not_downstream_of_a_failure() {
        // a fails; c is downstream (skipped), d downstream of c (not built); b still runs
        // (judged while a ran, and before c in the order, it starts first).
        let mut f = Fake::new(graph(4, &[(0, 2), (2, 3)]), 1, true, &[]);
        f.fail.insert(0);
        let f = f.run_all();
        assert_eq!(
            f.log,
            [
                "start a",
                "end a",
                "start b",
                "skip c (upstream failed: a)",
                "skip d (upstream not built: c)",
                "end b"
            ]
        );
    }

    #[test]
    fn a_failed_gate_blocks_everything_downstream_but_not_siblings() {
        // a's gate fails: b and its downstream c are blocked; d (independent) runs.
        let mut f = Fake::new(graph(4, &[(0, 1), (1, 2)]), 1, false, &[]);
        f.gate_fail.insert(0);
        let f = f.run_all();
        assert_eq!(
            f.log,
            [
                "start a",
                "end a",
                "block b (gate failed: g0 (stage a))",
                "block c (upstream blocked: b)",
                "start d",
                "end d"
            ]
        );
        assert!(f.s.gate_failed());
    }

    #[test]
    fn up_to_date_stages_release_their_downstream_without_running() {
        let mut f = Fake::new(graph(3, &[(0, 1), (1, 2)]), 2, false, &[]);
        f.fresh.extend([0, 1]);
        let f = f.run_all();
        assert_eq!(f.log, ["fresh a", "fresh b", "start c", "end c"]);
    }

    #[test]
    fn an_interrupt_skips_what_has_not_started() {
        let mut f = Fake::new(graph(3, &[(0, 1)]), 1, false, &[]);
        f.pump();
        assert_eq!(f.log, ["start a"]);
        f.s.interrupt();
        f.complete_first();
        f.pump();
        assert_eq!(
            f.log,
            [
                "start a",
                "end a",
                "skip b (build interrupted)",
                "skip c (build interrupted)"
            ]
        );
        assert!(f.s.is_done());
        assert!(
            f.log
                .iter()
                .all(|l| !l.starts_with("start b") && !l.starts_with("start c"))
        );
    }

    #[test]
    fn a_bad_cache_entry_requeues_the_stage_as_a_run() {
        let mut s = Scheduler::new(graph(1, &[]), &[0], 1, false, &BTreeMap::new());
        assert_eq!(s.poll(), [Action::Judge(0)]);
        s.judged(0, Work::Restore);
        assert!(matches!(
            s.poll()[..],
            [Action::Start {
                work: Work::Restore,
                ..
            }]
        ));
        s.retry_as_run(0);
        assert!(matches!(
            s.poll()[..],
            [Action::Start {
                work: Work::Run,
                ..
            }]
        ));
        s.finished(0, Settled::Ok);
        assert!(s.is_done());
    }
}
