//! The agent against a scripted control plane (`dataminer_tests::fake_cp`), for answers the
//! real one gives only in races or outages: a completion refused because a user cancelled
//! the task (a normal stop: nothing reported), a database outage (`503
//! database_unavailable` with `Retry-After`: retried, never the task's failure), and SIGTERM
//! while a long poll is in flight (finished, and what it brings released). No database is
//! involved, so these run once.

use std::time::Duration;

use dataminer_tests::fake_cp::{FakeControlPlane, Reply};
use dataminer_tests::server::MediaServer;
use dataminer_tests::{media, ScratchDir};
use dataminer_wire::{LeasedTask, Stage, TaskInput};
use reqwest::StatusCode;

use crate::harness::{start_agent, Agent};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    cp: FakeControlPlane,
    media: MediaServer,
    data: ScratchDir,
}

async fn setup() -> Setup {
    Setup {
        cp: FakeControlPlane::start().await,
        media: MediaServer::start(media::fixtures().to_path_buf()).await,
        data: ScratchDir::new(),
    }
}

impl Setup {
    /// A download agent allowed to fetch from the media server.
    async fn agent(&self, name: &str) -> Agent {
        let allow = self.media.host_port();
        start_agent(
            &self.cp.base,
            &self.data.0,
            name,
            &[("DATAMINER_ALLOW_HOSTS", &allow), ("DATAMINER_STAGES", "download")],
            true,
        )
        .await
    }

    fn download_task(&self, task_id: i64, file: &str) -> LeasedTask {
        LeasedTask {
            task_id,
            stage: Stage::Download,
            lease_token: 3,
            attempt: 1,
            max_attempts: 3,
            lease_ttl_ms: 60_000,
            time_limit_ms: 60_000,
            attempt_dir: format!("videos/1/{task_id}.3"),
            input: TaskInput {
                video_id: 1,
                url: Some(self.media.url(file)),
                source_kind: Some("direct".into()),
                ..Default::default()
            },
        }
    }
}

fn metric(outcome: &str) -> String {
    format!("dataminer_agent_tasks_total{{outcome=\"{outcome}\",stage=\"download\"}} 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_refused_as_cancelled_is_a_normal_stop() {
    let s = setup().await;
    s.cp.script_complete(&[Reply { status: StatusCode::CONFLICT, retry_after_s: None, code: "task_cancelled" }]);
    let a = s.agent("cancelled").await;
    s.cp.push_task(s.download_task(7, "cfr10.mp4"));
    a.wait_for_metric(&metric("cancelled")).await;
    assert_eq!(s.cp.calls_to("/complete").len(), 1);
    assert!(s.cp.calls_to("/fail").is_empty(), "a cancelled task's result is dropped, not reported as a failure");
    let m = a.metrics_text().await;
    assert!(!m.contains("outcome=\"failed_fatal\""), "{m}");
    assert!(!s.data.0.join("videos/1/7.3").exists(), "the cancelled attempt's directory is removed");
    let log = a.log_text();
    assert!(!log.contains("completion refused"), "{log}");
}

/// A completion refused because the lease expired (409 `lease_expired`) is a lost lease: the
/// result is dropped and nothing is reported as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_refused_as_expired_is_a_lost_lease() {
    let s = setup().await;
    s.cp.script_complete(&[Reply { status: StatusCode::CONFLICT, retry_after_s: None, code: "lease_expired" }]);
    let a = s.agent("expired").await;
    s.cp.push_task(s.download_task(9, "cfr10.mp4"));
    a.wait_for_metric(&metric("lease_lost")).await;
    assert_eq!(s.cp.calls_to("/complete").len(), 1);
    assert!(s.cp.calls_to("/fail").is_empty(), "an expired lease's result is dropped, not reported");
    let m = a.metrics_text().await;
    assert!(!m.contains("outcome=\"failed_fatal\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_is_retried_after_its_retry_after() {
    let s = setup().await;
    let unavailable =
        Reply { status: StatusCode::SERVICE_UNAVAILABLE, retry_after_s: Some(1), code: "database_unavailable" };
    s.cp.script_complete(&[unavailable.clone(), unavailable]);
    let a = s.agent("patient").await;
    s.cp.push_task(s.download_task(8, "cfr10.mp4"));
    a.wait_for_metric(&metric("succeeded")).await;
    let completes = s.cp.calls_to("/complete");
    assert_eq!(completes.len(), 3, "two refusals, then the completion that succeeded");
    for w in completes.windows(2) {
        // The backoff alone would retry within 200 ms; Retry-After asked for a second.
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(950), "retried after {gap:?}, before the Retry-After of 1 s");
    }
    assert!(s.cp.calls_to("/fail").is_empty(), "an outage of the control plane is not the task's failure");
    assert_eq!(completes[2].body, completes[0].body, "the same result, retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_poll_releases_what_it_brings() {
    let s = setup().await;
    s.cp.hold_leases(true);
    let mut a = s.agent("leaving").await;
    s.cp.wait_for_calls("/v1/leases", 1, WAIT).await;
    a.signal("TERM");
    // Only once the agent is shutting down does the control plane answer the long poll
    // it had been waiting on, with a task it leased to the agent in that window.
    let deadline = std::time::Instant::now() + WAIT;
    while !a.log_text().contains("shutdown signal received") {
        assert!(std::time::Instant::now() < deadline, "no shutdown:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.cp.push_task(s.download_task(9, "cfr10.mp4"));
    s.cp.hold_leases(false);
    let released = s.cp.wait_for_calls("/v1/tasks/9/release", 1, WAIT).await;
    assert_eq!(released[0].body["lease_token"], 3);
    let st = tokio::time::timeout(WAIT, a.child.wait()).await.expect("agent exits").expect("wait");
    assert!(st.success(), "{}", a.log_text());
    assert!(s.cp.calls_to("/complete").is_empty() && s.cp.calls_to("/heartbeat").is_empty(), "never run");
    assert_eq!(s.media.gets("cfr10.mp4").len(), 0, "nothing downloaded");
}
