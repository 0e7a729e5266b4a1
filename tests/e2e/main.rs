//! End-to-end suite: real control plane (SQLite and PostgreSQL), real agent processes, a
//! local HTTP server serving videos made by ffmpeg, real ffmpeg and yt-dlp. Expected frame
//! numbers and timestamps are literal values worked out from the fixture recipes in
//! `dataminer_tests::media` and the strategy rules in the agent's `extract::plan`.

/// Generates `sqlite::<case>` and `postgres::<case>` tests for each listed case.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(dataminer_tests::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(dataminer_tests::Db::Postgres).await
                }
            )*
        }
    };
}

mod harness;
mod lifecycle;
mod pipeline;
mod sources;
mod ssrf;
mod strategies;
