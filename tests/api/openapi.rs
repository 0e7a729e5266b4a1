//! The OpenAPI document against the real server: the committed document is valid OpenAPI 3.1
//! (`openapi-spec-validator`); query parameters are optional query parameters; the refusals
//! routes really give and the constraints the server really enforces are declared; and
//! Schemathesis finds nothing when it runs every operation with every check against a live
//! control plane (`tests/api/schemathesis.toml` lists each exclusion with its reason).
//!
//! The Python tools come from the project's `.venv` (`scripts/test.sh` installs
//! `requirements-dev.txt` into it) or from the directory `DATAMINER_PY_TOOLS` names. A missing
//! tool fails the test: it is part of the suite, not optional.

use std::path::PathBuf;
use std::time::Duration;

use dataminer_tests::*;
use serde_json::Value;

both!(schemathesis_finds_nothing);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("DATAMINER_PY_TOOLS").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv/bin"));
    let tool = dir.join(name);
    assert!(
        tool.is_file(),
        "{} is missing: run `bash scripts/test.sh` (it installs requirements-dev.txt into .venv), or \
         `python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt`",
        tool.display()
    );
    tool
}

fn tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let start = s.char_indices().rev().nth(max).map(|(i, _)| i).unwrap_or(0);
    s[start..].to_string()
}

/// Schemathesis' findings, each line cut short: a reproducing `curl` can carry a body of
/// thousands of URLs, which would push the rest out of sight.
fn report(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find("=== ERRORS ===").or_else(|| text.find("=== FAILURES ===")).unwrap_or(0);
    text[start..]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            if l.chars().count() > 300 {
                format!("{}…", l.chars().take(300).collect::<String>())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_committed_document_is_valid_openapi_3_1() {
    let out = std::process::Command::new(python_tool("openapi-spec-validator"))
        .arg(repo().join("openapi/openapi.json"))
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "openapi/openapi.json is not valid OpenAPI:\n{}{}",
        tail(&out.stdout, 4000),
        tail(&out.stderr, 4000)
    );
}

fn document() -> Value {
    let json = dataminer_control_plane::http::openapi().to_json().expect("render");
    serde_json::from_str(&json).expect("parse")
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            ops.push((method.to_uppercase(), path.clone(), op));
        }
    }
    ops
}

#[test]
fn query_parameters_are_optional_query_parameters() {
    let doc = document();
    for (path, names) in [
        ("/v1/videos", &["state", "project", "after", "limit"][..]),
        ("/v1/projects", &["after", "limit"]),
        ("/v1/tasks/dead", &["after", "limit"]),
        ("/status", &["format"]),
    ] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap_or_else(|| panic!("{path}: parameters"));
        let declared: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(declared, names, "{path}");
        for p in params {
            assert_eq!(p["in"], "query", "{path} {}", p["name"]);
            assert_ne!(p["required"], true, "{path} {}", p["name"]);
        }
    }
    // Every path parameter names a segment of its path.
    for (method, path, op) in operations(&doc) {
        for p in op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "path") {
            let name = p["name"].as_str().expect("name");
            assert!(path.contains(&format!("{{{name}}}")), "{method} {path}: path parameter {name} is not in the path");
        }
    }
}

#[test]
fn content_types_refusals_and_constraints_are_declared() {
    let doc = document();
    let status = &doc["paths"]["/status"]["get"]["responses"]["200"]["content"];
    assert!(status.get("application/json").is_some() && status.get("text/plain").is_some(), "{status}");
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        let has = |s: &str| responses.contains_key(s);
        if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
            assert!(has("401") && has("403"), "{method} {path}: 401/403 not declared");
        }
        if op.get("requestBody").is_some() {
            for s in ["400", "413", "415", "422"] {
                assert!(has(s), "{method} {path}: {s} not declared");
            }
        }
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["CreateProjectRequest"]["properties"]["name"]["minLength"], 1);
    assert!(schemas["CreateProjectRequest"]["properties"]["name"]["pattern"].is_string());
    assert_eq!(schemas["SubmitVideosRequest"]["properties"]["urls"]["minItems"], 1);
    assert_eq!(schemas["SubmitVideosRequest"]["properties"]["projects"]["minItems"], 1);
    assert_eq!(schemas["FilterConfig"]["properties"]["positive_prompts"]["minItems"], 1);
    assert!(schemas["ProjectConfig"]["required"].as_array().is_some_and(|r| r.contains(&Value::from("filter"))));
    assert_eq!(schemas["LeaseRequest"]["properties"]["max_tasks"]["maximum"], 64);
}

async fn schemathesis_finds_nothing(db: Db) {
    // Long polls short, so a generated `wait_ms` cannot hold a request for long.
    let app = spawn_app_with(db, |c| c.max_lease_wait_ms = 200).await;
    // Some state, so that generated requests also reach past "not found".
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let work = ScratchDir::new(); // schemathesis' cache and reports stay out of the tree
    let mut cmd = tokio::process::Command::new(python_tool("schemathesis"));
    cmd.arg("--no-color")
        .arg("--config-file")
        .arg(repo().join("tests/api/schemathesis.toml"))
        .arg("run")
        .arg(repo().join("openapi/openapi.json"))
        .args(["--url", &app.base, "--max-examples", "20", "--workers", "1", "--request-timeout", "10"])
        .env("DATAMINER_ST_USER_TOKEN", USER_TOKEN)
        .env("DATAMINER_ST_AGENT_TOKEN", AGENT_TOKEN)
        .current_dir(&work.0)
        .kill_on_drop(true);
    if let Ok(seed) = std::env::var("DATAMINER_SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let out = tokio::time::timeout(Duration::from_secs(480), cmd.output())
        .await
        .expect("schemathesis did not finish within 8 minutes")
        .expect("run schemathesis");
    assert!(
        out.status.success(),
        "schemathesis found problems ({db:?}; rerun with DATAMINER_SCHEMATHESIS_SEED=<the seed below>):\n{}\n{}",
        report(&out.stdout),
        tail(&out.stderr, 4000)
    );
    app.stop().await;
}
