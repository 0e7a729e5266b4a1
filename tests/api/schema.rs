//! The two backends' migrations define the same schema (tables, columns with type family and
//! nullability, named indexes, unique constraints, foreign keys), and migration 0004 carries a
//! database populated at the previous schema (0003) over to extractions without losing
//! anything: finished frames stay shared, waiting work still runs, failures stay retryable;
//! 0006 makes its waiting model tasks require their project's model.

use std::collections::BTreeSet;
use std::path::Path;

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor, Row};

both!(a_database_at_the_previous_schema_is_carried_over);

/// (table, column, type family, not null)
type Columns = BTreeSet<(String, String, &'static str, bool)>;
/// (table, index name, unique, columns)
type Indexes = BTreeSet<(String, String, bool, String)>;
/// (table, columns) of unique constraints, and (table, column, referenced table) of foreign keys
type Keys = (BTreeSet<(String, String)>, BTreeSet<(String, String, String)>);

fn family(t: &str) -> &'static str {
    let t = t.to_ascii_lowercase();
    if t.contains("int") {
        "integer"
    } else if t.contains("double") || t.contains("real") || t.contains("float") {
        "real"
    } else {
        "text"
    }
}

async fn migrator(backend: &str) -> Migrator {
    Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(backend))
        .await
        .expect("read migrations")
}

async fn sqlite_schema(path: &Path) -> (Columns, Indexes, Keys) {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("open");
    migrator("sqlite").await.run(&mut c).await.expect("migrate");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&mut c)
    .await
    .expect("tables");
    let (mut cols, mut idx, mut uniq, mut fks) = (Columns::new(), Indexes::new(), BTreeSet::new(), BTreeSet::new());
    for t in &tables {
        for r in sqlx::query(&format!("PRAGMA table_info({t})")).fetch_all(&mut c).await.expect("columns") {
            let ty: String = r.get("type");
            let pk: i64 = r.get("pk");
            let notnull: i64 = r.get("notnull");
            cols.insert((t.clone(), r.get("name"), family(&ty), notnull != 0 || pk != 0));
        }
        for r in sqlx::query(&format!("PRAGMA index_list({t})")).fetch_all(&mut c).await.expect("indexes") {
            let name: String = r.get("name");
            let origin: String = r.get("origin");
            let unique: i64 = r.get("unique");
            let columns: Vec<String> = sqlx::query(&format!("PRAGMA index_info({name})"))
                .fetch_all(&mut c)
                .await
                .expect("index columns")
                .iter()
                .map(|r| r.get::<String, _>("name"))
                .collect();
            match origin.as_str() {
                "c" => {
                    idx.insert((t.clone(), name, unique != 0, columns.join(",")));
                }
                "u" => {
                    uniq.insert((t.clone(), columns.join(",")));
                }
                _ => {}
            }
        }
        for r in sqlx::query(&format!("PRAGMA foreign_key_list({t})")).fetch_all(&mut c).await.expect("fks") {
            fks.insert((t.clone(), r.get("from"), r.get("table")));
        }
    }
    (cols, idx, (uniq, fks))
}

async fn postgres_schema(url: &str) -> (Columns, Indexes, Keys) {
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    migrator("postgres").await.run(&mut c).await.expect("migrate");
    let mut cols = Columns::new();
    for r in sqlx::query(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut c)
    .await
    .expect("columns")
    {
        let ty: String = r.get("data_type");
        let nullable: String = r.get("is_nullable");
        cols.insert((r.get("table_name"), r.get("column_name"), family(&ty), nullable == "NO"));
    }
    let mut idx = Indexes::new();
    for r in sqlx::query(
        "SELECT t.relname AS tab, i.relname AS name, ix.indisunique AS uniq, \
         (SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, n) \
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) AS cols \
         FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_class t ON t.oid = ix.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND t.relname NOT LIKE '\\_sqlx%' AND NOT ix.indisprimary \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid)",
    )
    .fetch_all(&mut c)
    .await
    .expect("indexes")
    {
        idx.insert((
            r.get("tab"),
            r.get("name"),
            r.get("uniq"),
            r.get::<Option<String>, _>("cols").unwrap_or_default(),
        ));
    }
    let mut uniq = BTreeSet::new();
    for r in sqlx::query(
        "SELECT t.relname AS tab, (SELECT string_agg(a.attname, ',' ORDER BY k.n) \
           FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) \
           JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) AS cols \
         FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND c.contype = 'u'",
    )
    .fetch_all(&mut c)
    .await
    .expect("unique constraints")
    {
        uniq.insert((r.get("tab"), r.get("cols")));
    }
    let mut fks = BTreeSet::new();
    for r in sqlx::query(
        "SELECT t.relname AS tab, a.attname AS col, rt.relname AS ref FROM pg_constraint c \
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class rt ON rt.oid = c.confrelid \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = c.conkey[1] \
         JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public' AND c.contype = 'f'",
    )
    .fetch_all(&mut c)
    .await
    .expect("foreign keys")
    {
        fks.insert((r.get("tab"), r.get("col"), r.get("ref")));
    }
    (cols, idx, (uniq, fks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_define_the_same_schema() {
    let dir = ScratchDir::new();
    let lite = sqlite_schema(&dir.0.join("schema.db")).await;
    let url = fresh_pg_database().await;
    let pg = postgres_schema(&url).await;
    drop_pg_database(&url).await;
    assert!(!lite.0.is_empty() && !lite.1.is_empty(), "nothing read: {lite:?}");
    assert_eq!(lite.0, pg.0, "columns differ (left: SQLite, right: PostgreSQL)");
    assert_eq!(lite.1, pg.1, "indexes differ (left: SQLite, right: PostgreSQL)");
    assert_eq!(lite.2 .0, pg.2 .0, "unique constraints differ (left: SQLite, right: PostgreSQL)");
    assert_eq!(lite.2 .1, pg.2 .1, "foreign keys differ (left: SQLite, right: PostgreSQL)");
}

/// Rows as the control plane of schema 0003 wrote them: video 1 extracted (its project-video
/// filtering), video 2 an identical copy linked to it, video 3 downloaded with its extract
/// queued, video 4 failed at extract, video 5 not downloaded yet.
const POPULATED_0003: &str = r#"
INSERT INTO projects (id, name, config, cancelled, created_at, updated_at) VALUES
 (1, 'a', '{CONFIG}', 0, 1, 1),
 (2, 'b', '{CONFIG}', 0, 1, 1);
INSERT INTO videos (id, url, url_key, source_kind, origin, state, failed_stage, error, priority, extract_config, sha256,
                    file_path, frames_dir, manifest_path, frame_count, content_of, created_at, updated_at) VALUES
 (1, 'https://e.com/1.mp4', 'https://e.com/1.mp4', 'direct', 'api', 'EXTRACTED', NULL, NULL, 0, '{EXTRACT}', '{SHA1}',
  'videos/1/1.1/video.mp4', 'frames_raw/1/2.1', 'frames_raw/1/2.1/manifest.json', 10, NULL, 1, 1),
 (2, 'https://f.com/2.mp4', 'https://f.com/2.mp4', 'direct', 'api', 'EXTRACTED', NULL, NULL, 0, '{EXTRACT}', '{SHA1}',
  'videos/2/3.1/video.mp4', 'frames_raw/1/2.1', 'frames_raw/1/2.1/manifest.json', 10, 1, 1, 1),
 (3, 'https://e.com/3.mp4', 'https://e.com/3.mp4', 'direct', 'api', 'DOWNLOADED', NULL, NULL, 0, '{EXTRACT}', '{SHA3}',
  'videos/3/4.1/video.mp4', NULL, NULL, NULL, NULL, 1, 1),
 (4, 'https://e.com/4.mp4', 'https://e.com/4.mp4', 'direct', 'api', 'FAILED', 'extract', 'ffmpeg reported errors', 0,
  '{EXTRACT}', '{SHA4}', 'videos/4/6.1/video.mp4', NULL, NULL, NULL, NULL, 1, 1),
 (5, 'https://e.com/5.mp4', 'https://e.com/5.mp4', 'direct', 'api', 'PENDING', NULL, NULL, 0, '{EXTRACT}', NULL,
  NULL, NULL, NULL, NULL, NULL, 1, 1);
INSERT INTO project_videos (project_id, video_id, state, failed_stage, error, created_at, updated_at) VALUES
 (1, 1, 'FILTERING', NULL, NULL, 1, 1),
 (2, 2, 'PENDING', NULL, NULL, 1, 1),
 (1, 3, 'PENDING', NULL, NULL, 1, 1),
 (1, 4, 'FAILED', 'extract', 'video failed at extract: ffmpeg reported errors', 1, 1),
 (1, 5, 'PENDING', NULL, NULL, 1, 1);
INSERT INTO tasks (id, stage, video_id, project_id, state, attempts, max_attempts, priority, run_after, time_limit_ms,
                   lease_token, created_at, updated_at, last_error) VALUES
 (1, 'download', 1, NULL, 'succeeded', 1, 5, 0, 1, 3600000, 1, 1, 1, NULL),
 (2, 'extract', 1, NULL, 'succeeded', 1, 5, 0, 1, 3600000, 1, 1, 1, NULL),
 (3, 'download', 2, NULL, 'succeeded', 1, 5, 0, 1, 3600000, 1, 1, 1, NULL),
 (4, 'download', 3, NULL, 'succeeded', 1, 5, 0, 1, 3600000, 1, 1, 1, NULL),
 (5, 'extract', 3, NULL, 'queued', 0, 5, 0, 1, 3600000, 0, 1, 1, NULL),
 (6, 'download', 4, NULL, 'succeeded', 1, 5, 0, 1, 3600000, 1, 1, 1, NULL),
 (7, 'extract', 4, NULL, 'dead', 1, 5, 0, 1, 3600000, 1, 1, 1, 'ffmpeg reported errors'),
 (8, 'filter', 1, 1, 'queued', 0, 5, 0, 1, 7200000, 0, 1, 1, NULL),
 (9, 'filter', 2, 2, 'queued', 0, 5, 0, 1, 7200000, 0, 1, 1, NULL),
 (10, 'download', 5, NULL, 'queued', 0, 5, 0, 1, 3600000, 0, 1, 1, NULL);
"#;

fn populated_sql() -> String {
    let mut config = ProjectConfig::default();
    config.filter.positive_prompts = vec!["a door".into()];
    let config = serde_json::to_string(&config).expect("config");
    let extract = serde_json::to_string(&ExtractConfig::default()).expect("extract");
    POPULATED_0003
        .replace("{CONFIG}", &config)
        .replace("{EXTRACT}", &extract)
        .replace("{SHA1}", &format!("{:064x}", 1))
        .replace("{SHA3}", &format!("{:064x}", 3))
        .replace("{SHA4}", &format!("{:064x}", 4))
}

/// Migrations up to 0003 only.
async fn migrator_0003(backend: &str) -> Migrator {
    let mut m = migrator(backend).await;
    m.migrations = std::borrow::Cow::Owned(m.migrations.iter().filter(|x| x.version <= 3).cloned().collect());
    m
}

async fn a_database_at_the_previous_schema_is_carried_over(db: Db) {
    let dir = ScratchDir::new();
    let url = match db {
        Db::Sqlite => {
            let path = dir.0.join("dataminer.db");
            let mut c =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("open");
            migrator_0003("sqlite").await.run(&mut c).await.expect("migrate to 0003");
            c.execute(populated_sql().as_str()).await.expect("populate");
            None
        }
        Db::Postgres => {
            let url = fresh_pg_database().await;
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            migrator_0003("postgres").await.run(&mut c).await.expect("migrate to 0003");
            c.execute(populated_sql().as_str()).await.expect("populate");
            // Identity sequences past the inserted ids, as inserts through the app leave them.
            for t in ["projects", "videos", "tasks"] {
                let sql = format!("SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT MAX(id) FROM {t}))");
                c.execute(sql.as_str()).await.expect("sequence");
            }
            Some(url)
        }
    };
    let state_dir = dir.0.clone();
    let app = spawn_app_with(db, move |c| {
        c.state_dir = state_dir;
        if let Some(u) = url {
            c.database_url = Some(dataminer_control_plane::config::Secret(u));
        }
    })
    .await;
    let agent = app.register("w", &Stage::ALL, &DEFAULT_MODELS).await;
    // 0006: the carried-over queued filter tasks require their project's model, so an agent
    // without it is not leased them.
    let bare = app.register("bare", &[Stage::Filter], &[]).await;
    assert!(app.lease(bare, &[Stage::Filter], 10, 0).await.is_empty());
    let tasks = app.video(1).await.tasks;
    let requires = |stage: Stage| tasks.iter().find(|t| t.stage == stage).map(|t| t.requires.clone());
    assert_eq!(requires(Stage::Filter), Some(Some("model:siglip2".into())));
    assert_eq!(requires(Stage::Download), Some(None));

    // Video 1: downloaded; its project-video keeps filtering the frames it had.
    let one = app.video(1).await;
    assert_eq!(one.video.state, VideoState::Downloaded);
    let e1 = one.projects[0].extraction.clone().expect("extraction carried over");
    assert_eq!(
        (e1.state, e1.frames_dir.as_deref(), e1.frame_count),
        (ExtractionState::Extracted, Some("frames_raw/1/2.1"), Some(10))
    );
    assert_eq!(one.projects[0].state, ProjectVideoState::Filtering);
    // Video 2 (identical copy, project b) uses the same extraction.
    let two = app.video(2).await;
    assert_eq!(two.projects[0].extraction.as_ref().map(|e| e.id), Some(e1.id));
    // The carried-over key is canonical: a new project with equal settings shares it.
    app.create_project("c").await;
    app.submit(&["https://e.com/1.mp4"], &["c"]).await;
    let one = app.video(1).await;
    assert_eq!(one.extractions.len(), 1, "{:?}", one.extractions);
    // Filters: the two queued before (a/1, b/2) and c's, at once; all on the same frames.
    let filters = app.lease(agent, &[Stage::Filter], 10, 500).await;
    assert_eq!(filters.len(), 3, "{filters:?}");
    assert!(filters.iter().all(|f| f.input.frames_dir.as_deref() == Some("frames_raw/1/2.1")), "{filters:?}");

    // Video 3: its queued extract runs and its project-video then filters.
    let ex = app.lease_one(agent, Stage::Extract).await;
    assert_eq!((ex.input.video_id, ex.input.video_path.as_deref()), (3, Some("videos/3/4.1/video.mp4")));
    assert_eq!(ex.input.extract, Some(ExtractConfig::default()));
    app.complete_ok(&ex, &result_for(&ex, 3, 0)).await;
    assert_eq!(app.lease_one(agent, Stage::Filter).await.input.video_id, 3);

    // Video 4: downloaded, its extraction failed; retrying the video retries the extraction.
    let four = app.video(4).await;
    assert_eq!(four.video.state, VideoState::Downloaded);
    assert_eq!(four.projects[0].extraction.as_ref().map(|e| e.state), Some(ExtractionState::Failed));
    assert_eq!(four.projects[0].state, ProjectVideoState::Failed);
    let r: VideoDetail =
        expect_json(app.user(Method::POST, "/v1/videos/4/retry").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(r.projects[0].state, ProjectVideoState::Pending);
    let ex = app.lease_one(agent, Stage::Extract).await;
    assert_eq!(ex.input.video_id, 4);

    // Video 5: downloads, then gets an extraction of its own.
    let dl = app.lease_one(agent, Stage::Download).await;
    assert_eq!(dl.input.video_id, 5);
    app.complete_ok(&dl, &result_for(&dl, 5, 0)).await;
    let ex = app.lease_one(agent, Stage::Extract).await;
    assert_eq!(ex.input.video_id, 5);
    let body = json!({"name": "fresh", "config": {"filter": {"positive_prompts": ["x"]}}});
    let _: ProjectView = expect_json(
        app.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send"),
        StatusCode::CREATED,
    )
    .await;
    app.stop().await;
}
