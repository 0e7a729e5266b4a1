//! The pipeline's state machine as one explicit table. Three kinds of subject carry a state:
//! a video (its download), an extraction (one content × one set of extract settings) and a
//! project-video (filter → dedup → detect). Every state change in the store is an UPDATE whose
//! `WHERE state IN (…)` guard is generated from this table ([`guard`]), so a change that the
//! table does not allow — a completion landing on a CANCELLED row, say — changes nothing, and
//! the tests check the table itself (every state reachable, every non-terminal state has a
//! way out).
//!
//! Adding a stage means adding its subject's rows here; see ARCHITECTURE.md.

use dataminer_wire::Stage;

/// What a state belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    Video,
    Extraction,
    ProjectVideo,
}

impl Subject {
    pub(crate) fn table(self) -> &'static str {
        match self {
            Subject::Video => "videos",
            Subject::Extraction => "extractions",
            Subject::ProjectVideo => "project_videos",
        }
    }
}

/// Why a subject changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Its task was leased.
    Lease,
    /// Its task went back to the queue (retryable failure, expiry, release).
    Requeue,
    /// Its task completed.
    Complete,
    /// Its task died (fatal failure or attempts exhausted).
    Die,
    /// Something it waits on (its video's download, its extraction) failed.
    UpstreamFailed,
    /// A user cancelled it (its project or video).
    Cancel,
    /// A user retried it (its dead or cancelled task, or its video).
    Reopen,
    /// A user re-runs its project from this stage (`POST /v1/projects/{name}/rerun`), after
    /// a config change: it goes back to the stage's waiting state with a new task.
    Rerun,
}

/// One allowed change: subjects of `subject` in one of `from` go to one of `to` on `event`
/// (`stage`: the task's stage, for the events a task causes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transition {
    pub subject: Subject,
    pub stage: Option<Stage>,
    pub event: Event,
    pub from: &'static [&'static str],
    pub to: &'static [&'static str],
}

const fn t(
    subject: Subject,
    stage: Option<Stage>,
    event: Event,
    from: &'static [&'static str],
    to: &'static [&'static str],
) -> Transition {
    Transition { subject, stage, event, from, to }
}

use Event::*;
use Subject::*;

const DL: Option<Stage> = Some(Stage::Download);
const EX: Option<Stage> = Some(Stage::Extract);
const FI: Option<Stage> = Some(Stage::Filter);
const DD: Option<Stage> = Some(Stage::Dedup);
const DT: Option<Stage> = Some(Stage::Detect);

/// Project-video states in which nothing is finished yet (a cancel or an upstream failure
/// reaches them).
pub(crate) const PV_OPEN: &[&str] = &["PENDING", "FILTERING", "FILTERED", "DEDUPING", "DEDUPED", "DETECTING"];

/// The whole machine. Initial states: a video starts `PENDING`, an extraction `PENDING`, a
/// project-video `PENDING` (or `FAILED`/`CANCELLED` when it joins a video that already is).
pub(crate) const TRANSITIONS: &[Transition] = &[
    // Videos: the download.
    t(Video, DL, Lease, &["PENDING"], &["DOWNLOADING"]),
    t(Video, DL, Requeue, &["DOWNLOADING"], &["PENDING"]),
    t(Video, DL, Complete, &["DOWNLOADING"], &["DOWNLOADED"]),
    t(Video, DL, Die, &["PENDING", "DOWNLOADING"], &["FAILED"]),
    t(Video, None, Cancel, &["PENDING", "DOWNLOADING"], &["CANCELLED"]),
    t(Video, None, Reopen, &["FAILED", "CANCELLED"], &["PENDING"]),
    // Extractions: one content × one set of settings.
    t(Extraction, EX, Lease, &["PENDING"], &["EXTRACTING"]),
    t(Extraction, EX, Requeue, &["EXTRACTING"], &["PENDING"]),
    t(Extraction, EX, Complete, &["EXTRACTING"], &["EXTRACTED"]),
    t(Extraction, EX, Die, &["PENDING", "EXTRACTING"], &["FAILED"]),
    t(Extraction, None, Cancel, &["PENDING", "EXTRACTING"], &["CANCELLED"]),
    t(Extraction, None, Reopen, &["FAILED", "CANCELLED"], &["PENDING"]),
    // Project-videos: PENDING until their extraction's frames exist and filter runs.
    t(ProjectVideo, FI, Lease, &["PENDING"], &["FILTERING"]),
    t(ProjectVideo, FI, Requeue, &["FILTERING"], &["PENDING"]),
    t(ProjectVideo, FI, Complete, &["FILTERING"], &["FILTERED", "FILTERED_EMPTY"]),
    t(ProjectVideo, DD, Lease, &["FILTERED"], &["DEDUPING"]),
    t(ProjectVideo, DD, Requeue, &["DEDUPING"], &["FILTERED"]),
    t(ProjectVideo, DD, Complete, &["DEDUPING"], &["DEDUPED", "COMPLETE"]),
    t(ProjectVideo, DT, Lease, &["DEDUPED"], &["DETECTING"]),
    t(ProjectVideo, DT, Requeue, &["DETECTING"], &["DEDUPED"]),
    t(ProjectVideo, DT, Complete, &["DETECTING"], &["COMPLETE"]),
    t(ProjectVideo, FI, Die, &["PENDING", "FILTERING"], &["FAILED"]),
    t(ProjectVideo, DD, Die, &["FILTERED", "DEDUPING"], &["FAILED"]),
    t(ProjectVideo, DT, Die, &["DEDUPED", "DETECTING"], &["FAILED"]),
    t(ProjectVideo, None, UpstreamFailed, &["PENDING"], &["FAILED"]),
    t(ProjectVideo, None, Cancel, PV_OPEN, &["CANCELLED"]),
    t(ProjectVideo, FI, Reopen, &["FAILED", "CANCELLED"], &["PENDING"]),
    t(ProjectVideo, DD, Reopen, &["FAILED", "CANCELLED"], &["FILTERED"]),
    t(ProjectVideo, DT, Reopen, &["FAILED", "CANCELLED"], &["DEDUPED"]),
    t(ProjectVideo, None, Reopen, &["FAILED", "CANCELLED"], &["PENDING"]),
    // Reruns: only project-videos at rest past the stage (none of its tasks running).
    t(ProjectVideo, FI, Rerun, &["FILTERED", "FILTERED_EMPTY", "DEDUPED", "COMPLETE"], &["PENDING"]),
    t(ProjectVideo, DD, Rerun, &["FILTERED", "DEDUPED", "COMPLETE"], &["FILTERED"]),
];

/// The transition for (subject, stage, event). A missing row is a bug in the store, caught
/// by the table tests below for every combination the code uses.
pub(crate) fn transition(subject: Subject, stage: Option<Stage>, event: Event) -> &'static Transition {
    TRANSITIONS
        .iter()
        .find(|x| x.subject == subject && x.stage == stage && x.event == event)
        .or_else(|| TRANSITIONS.iter().find(|x| x.subject == subject && x.stage.is_none() && x.event == event))
        .unwrap_or_else(|| panic!("no transition for {subject:?} {stage:?} {event:?}"))
}

/// `state IN ('A', 'B')` for the transition's from-states (`col` qualifies the column). The
/// states are literals of this table, never input.
pub(crate) fn guard(col: &str, subject: Subject, stage: Option<Stage>, event: Event) -> String {
    in_list(col, transition(subject, stage, event).from)
}

/// `col IN ('A', 'B')` of literal states.
pub(crate) fn in_list(col: &str, states: &[&str]) -> String {
    let quoted: Vec<String> = states.iter().map(|s| format!("'{s}'")).collect();
    format!("{col} IN ({})", quoted.join(", "))
}

/// The single target state of a transition that has one.
pub(crate) fn target(subject: Subject, stage: Option<Stage>, event: Event) -> &'static str {
    transition(subject, stage, event).to[0]
}

/// (waiting, running) states of a stage's subject: where its queued task's subject sits and
/// where a lease moves it.
#[cfg(test)]
pub(crate) fn waiting_running(stage: Stage) -> (&'static str, &'static str) {
    let t = transition(subject_of(stage), Some(stage), Lease);
    (t.from[0], t.to[0])
}

/// The subject a stage's task works on.
pub(crate) fn subject_of(stage: Stage) -> Subject {
    match stage {
        Stage::Download => Video,
        Stage::Extract => Extraction,
        Stage::Filter | Stage::Dedup | Stage::Detect => ProjectVideo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataminer_wire::{ExtractionState, ProjectVideoState, VideoState};

    fn states(s: Subject) -> Vec<&'static str> {
        match s {
            Video => VideoState::ALL.iter().map(|x| x.as_str()).collect(),
            Extraction => ExtractionState::ALL.iter().map(|x| x.as_str()).collect(),
            ProjectVideo => ProjectVideoState::ALL.iter().map(|x| x.as_str()).collect(),
        }
    }

    #[test]
    fn every_state_in_the_table_is_a_wire_state() {
        for x in TRANSITIONS {
            for s in x.from.iter().chain(x.to) {
                assert!(states(x.subject).contains(s), "{x:?}: {s} is not a {:?} state", x.subject);
            }
        }
    }

    #[test]
    fn every_state_is_reachable_from_the_initial_one() {
        for subject in [Video, Extraction, ProjectVideo] {
            let mut seen = vec!["PENDING"];
            if subject == ProjectVideo {
                seen.extend(["FAILED", "CANCELLED"]);
            }
            loop {
                let before = seen.len();
                for x in TRANSITIONS.iter().filter(|x| x.subject == subject) {
                    if x.from.iter().any(|f| seen.contains(f)) {
                        for to in x.to {
                            if !seen.contains(to) {
                                seen.push(to);
                            }
                        }
                    }
                }
                if seen.len() == before {
                    break;
                }
            }
            for s in states(subject) {
                assert!(seen.contains(&s), "{subject:?} {s} is unreachable");
            }
        }
    }

    #[test]
    fn every_state_has_a_way_out_or_is_terminal_and_retryable() {
        // Terminal states can only be left by a user's retry; everything else must be left
        // by some task event or a cancel (nothing waits forever).
        let terminal = |s: Subject, st: &str| match s {
            Video => ["DOWNLOADED", "FAILED", "CANCELLED"].contains(&st),
            Extraction => ["EXTRACTED", "FAILED", "CANCELLED"].contains(&st),
            ProjectVideo => ProjectVideoState::parse(st).is_some_and(|p| p.is_terminal()),
        };
        for subject in [Video, Extraction, ProjectVideo] {
            for s in states(subject) {
                let exits: Vec<&Transition> =
                    TRANSITIONS.iter().filter(|x| x.subject == subject && x.from.contains(&s)).collect();
                if terminal(subject, s) {
                    if s == "FAILED" || s == "CANCELLED" {
                        assert!(exits.iter().any(|x| x.event == Reopen), "{subject:?} {s} cannot be retried");
                    }
                } else {
                    assert!(exits.iter().any(|x| x.event == Cancel), "{subject:?} {s} cannot be cancelled");
                    assert!(exits.iter().any(|x| x.event != Cancel), "{subject:?} {s} has no way forward");
                }
            }
        }
    }

    #[test]
    fn every_stage_has_lease_requeue_complete_die() {
        for stage in Stage::ALL {
            for e in [Lease, Requeue, Complete, Die] {
                let x = transition(subject_of(stage), Some(stage), e);
                assert_eq!(x.stage, Some(stage), "{stage} {e:?}");
            }
            let (waiting, running) = waiting_running(stage);
            assert_eq!(transition(subject_of(stage), Some(stage), Requeue).to, &[waiting]);
            assert_eq!(transition(subject_of(stage), Some(stage), Requeue).from, &[running]);
        }
    }

    #[test]
    fn reruns_leave_only_resting_states_and_land_on_the_waiting_state() {
        for stage in [Stage::Filter, Stage::Dedup] {
            let x = transition(ProjectVideo, Some(stage), Rerun);
            assert_eq!(x.stage, Some(stage));
            let (waiting, running) = waiting_running(stage);
            assert_eq!(x.to, &[waiting]);
            for running in [running, "DEDUPING", "DETECTING", "FAILED", "CANCELLED"] {
                assert!(!x.from.contains(&running), "{stage} rerun from {running}");
            }
        }
    }

    #[test]
    fn guards_are_generated_from_the_table() {
        assert_eq!(guard("state", ProjectVideo, Some(Stage::Dedup), Complete), "state IN ('DEDUPING')");
        assert_eq!(guard("pv.state", ProjectVideo, None, Cancel).matches('\'').count(), PV_OPEN.len() * 2);
    }
}
