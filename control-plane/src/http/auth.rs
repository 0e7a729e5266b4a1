//! Bearer-token roles. User routes take the user token, agent routes the agent token,
//! neither the other's; `/healthz`, `/readyz` and `/metrics` are open. With no tokens
//! configured every route is open — the server then only binds to loopback (checked at
//! start). Tokens are compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Agent,
}

fn presented(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn check(state: &AppState, req: &Request, allowed: &[Role]) -> Result<(), ApiError> {
    let (Some(user), Some(agent)) = (&state.http.user_token, &state.http.agent_token) else {
        return Ok(());
    };
    let Some(token) = presented(req) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token"));
    };
    let role = if eq(token, user) {
        Role::User
    } else if eq(token, agent) {
        Role::Agent
    } else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid bearer token"));
    };
    if allowed.contains(&role) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the {} token cannot call this route", if role == Role::User { "user" } else { "agent" }),
        ))
    }
}

fn unauthorized(e: ApiError) -> Response {
    let mut r = e.into_response();
    if r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    r
}

pub async fn require_user(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(&state, &req, &[Role::User]) {
        Ok(()) => next.run(req).await,
        Err(e) => unauthorized(e),
    }
}

pub async fn require_agent(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(&state, &req, &[Role::Agent]) {
        Ok(()) => next.run(req).await,
        Err(e) => unauthorized(e),
    }
}

pub async fn require_any(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(&state, &req, &[Role::User, Role::Agent]) {
        Ok(()) => next.run(req).await,
        Err(e) => unauthorized(e),
    }
}
