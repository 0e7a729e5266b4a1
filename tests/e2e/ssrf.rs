//! The download guard against real sockets: forbidden targets in every spelling, a redirect
//! to the metadata address or to a local listener, and a name that resolves to loopback are
//! refused before any connection; a canary listener counts zero connections. (The proxy
//! from `HTTP_PROXY` and the redirect cases through the whole system are in `pipeline`.)

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use clap::Parser;
use dataminer_agent::config::Config;
use dataminer_agent::error::TaskError;
use dataminer_agent::metrics::Metrics;
use dataminer_agent::stages::download::guard::{Guard, Resolve};
use dataminer_agent::stages::download::http::fetch;
use dataminer_agent::stages::{Progress, StageContext};
use dataminer_tests::server::{Canary, MediaServer};
use dataminer_tests::{media, ScratchDir};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Resolves every name to 127.0.0.1 (a DNS answer pointing inside).
struct ToLoopback;

impl Resolve for ToLoopback {
    fn resolve<'a>(&'a self, _host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(vec![SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)]) })
    }
}

fn context(allow: &[String], resolver: Arc<dyn Resolve>) -> StageContext {
    let cfg = Config::try_parse_from(["agent", "--min-free-bytes", "0"]).expect("config");
    StageContext::new(Arc::new(cfg), Guard::new(allow, resolver), Metrics::new().expect("metrics"))
}

async fn refused(ctx: &StageContext, url: &str, dir: &ScratchDir) -> String {
    let u = Url::parse(url).expect("url");
    match fetch(ctx, &u, &dir.0, &Arc::new(Progress::default()), &CancellationToken::new()).await {
        Err(TaskError::Fatal(m)) => m,
        other => panic!("{url}: expected a fatal refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_targets_never_get_a_connection() {
    let canary = Canary::start("127.0.0.1:0").await;
    let canary6 = Canary::start("[::1]:0").await;
    let media = MediaServer::start(media::fixtures().to_path_buf()).await;
    let c = canary.port;
    media.redirect("to-metadata", "http://169.254.169.254/latest/meta-data/iam/");
    media.redirect("to-canary", &format!("http://127.0.0.1:{c}/x.mp4"));
    media.redirect("to-canary-hex", &format!("http://0x7f000001:{c}/x.mp4"));
    let ctx = context(&[media.host_port()], Arc::new(dataminer_agent::stages::download::guard::SystemResolver));
    let dir = ScratchDir::new();
    for url in [
        format!("http://127.0.0.1:{c}/v.mp4"),
        format!("http://2130706433:{c}/v.mp4"),  // integer
        format!("http://0x7f000001:{c}/v.mp4"),  // hex
        format!("http://0x7f.0.0.1:{c}/v.mp4"),  // hex octet
        format!("http://0177.0.0.01:{c}/v.mp4"), // octal
        format!("http://127.1:{c}/v.mp4"),       // short form
        format!("http://0.0.0.0:{c}/v.mp4"),     // "this host"
        format!("http://0:{c}/v.mp4"),
        format!("http://[::ffff:127.0.0.1]:{c}/v.mp4"), // IPv4-mapped
        format!("http://[::ffff:7f00:1]:{c}/v.mp4"),
        format!("http://[::1]:{}/v.mp4", canary6.port),
        format!("http://localhost:{c}/v.mp4"),
        "http://10.0.0.1/v.mp4".into(),
        "http://192.168.1.1/v.mp4".into(),
        "http://172.16.0.1/v.mp4".into(),
        "http://100.64.0.1/v.mp4".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fe80::1]/v.mp4".into(),
        "http://[fd00::1]/v.mp4".into(),
        "http://metadata.google.internal/computeMetadata/v1/".into(),
        media.url("to-metadata"),
        media.url("to-canary"),
        media.url("to-canary-hex"),
    ] {
        let m = refused(&ctx, &url, &dir).await;
        assert!(m.contains("refused"), "{url}: {m}");
    }
    // A name whose DNS answer is loopback is refused after resolution.
    let rebinding = context(&[], Arc::new(ToLoopback));
    let m = refused(&rebinding, &format!("http://videos.example.com:{c}/v.mp4"), &dir).await;
    assert!(m.contains("resolves to 127.0.0.1"), "{m}");
    assert_eq!(canary.hits() + canary6.hits(), 0, "a forbidden target was connected to");
    // The redirects were followed only as far as the media server itself.
    assert_eq!(media.gets("to-canary").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_download_streams_hashes_and_sizes() {
    let media = MediaServer::start(media::fixtures().to_path_buf()).await;
    let ctx = context(&[media.host_port()], Arc::new(dataminer_agent::stages::download::guard::SystemResolver));
    let dir = ScratchDir::new();
    let p = Arc::new(Progress::default());
    let f = fetch(&ctx, &Url::parse(&media.url("cfr25.mp4")).expect("url"), &dir.0, &p, &CancellationToken::new())
        .await
        .expect("download");
    assert_eq!(f.sha256, media::sha256_of("cfr25.mp4"));
    assert_eq!(f.size, std::fs::metadata(media::fixtures().join("cfr25.mp4")).expect("md").len());
    assert_eq!(f.path, dir.0.join("video.mp4"));
    assert!(!dir.0.join("video.part").exists());
}
