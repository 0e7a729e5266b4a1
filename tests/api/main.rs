//! The behavioural suite: every case is an `async fn(Db)` written once and run against the
//! embedded SQLite file and against PostgreSQL (`both!` generates one test per backend).

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

mod auth;
mod errors;
mod leases;
mod lifecycle;
mod ops;
mod pipeline;
mod process;
mod projects;
mod reaper;
mod safety;
mod transitions;
mod videos;
