//! OpenAPI schema pieces that the derive attributes cannot express (constraints on the items
//! of an array). Each mirrors a check the control plane really makes, so a client can
//! validate a request against the document before sending it.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::{Array, Object, SchemaFormat};

/// At least one character that is not white space by Rust's `char::is_whitespace` (what the
/// control plane's `trim().is_empty()` checks); `\S` alone differs on some code points.
pub const NON_BLANK_PATTERN: &str = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// [`NON_BLANK_PATTERN`] over the whole string, none of whose characters is U+0000.
pub const FAILURE_PATTERN: &str =
    r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$";

/// A string that is not blank, of at most `max` characters.
fn non_blank(max: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(NON_BLANK_PATTERN))
        .build()
}

/// `filter.positive_prompts`: 1 to 256 non-blank prompts of at most 500 characters.
pub fn positive_prompts() -> Array {
    ArrayBuilder::new()
        .items(non_blank(crate::config::MAX_PROMPT_CHARS))
        .min_items(Some(1))
        .max_items(Some(crate::config::MAX_PROMPTS))
        .description(Some("What the filter keeps frames for; at least one."))
        .build()
}

/// Other prompt lists: at most 256 non-blank prompts of at most 500 characters.
pub fn prompts() -> Array {
    ArrayBuilder::new()
        .items(non_blank(crate::config::MAX_PROMPT_CHARS))
        .max_items(Some(crate::config::MAX_PROMPTS))
        .build()
}

/// Capability tags: at most 64 of 1 to 64 characters.
pub fn capabilities() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(crate::MAX_CAPABILITY_CHARS))
                .pattern(Some(crate::NO_NUL_PATTERN)),
        )
        .max_items(Some(64))
        .description(Some(
            "Capability tags, e.g. `yt-dlp`, `gpu`, `ffmpeg`, `model:siglip2` (one per model package the agent \
             serves). A task that requires a capability is only leased to agents that advertise it.",
        ))
        .build()
}

/// Project names in a submission: each must name an existing project, so it has the
/// project-name form.
pub fn project_names() -> Array {
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).pattern(Some(crate::projects::PROJECT_NAME_PATTERN)))
        .min_items(Some(1))
        .description(Some("Projects (by name) the videos join; at least one."))
        .build()
}

/// The longest URL a submission may carry.
pub const MAX_URL_CHARS: usize = 2048;

/// The server's default `max_urls_per_request` (a deployment may lower or raise it).
pub const DEFAULT_MAX_URLS: usize = 10_000;

/// Submitted URLs: 1 to `max_urls_per_request` http(s) URLs of at most 2048 characters.
pub fn urls() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom("uri".into())))
                .min_length(Some(1))
                .max_length(Some(MAX_URL_CHARS))
                .pattern(Some("^[Hh][Tt][Tt][Pp][Ss]?://[^\\u0000]*$")),
        )
        .min_items(Some(1))
        .max_items(Some(DEFAULT_MAX_URLS))
        .description(Some(
            "http(s) URLs without credentials, to globally routable hosts (or the server's allow-list); at \
             least one and at most the server's `max_urls_per_request` (default 10000, the bound declared here).",
        ))
        .build()
}

/// `FailRequest.error`: not blank, no U+0000 (stored as text).
pub fn failure_message() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .pattern(Some(FAILURE_PATTERN))
        .description(Some("What went wrong (stored as the task's last error; at most 4 KiB kept); not blank."))
        .build()
}
