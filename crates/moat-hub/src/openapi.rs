//! The OpenAPI 3.1 document served at `/api/openapi.json`.

/// The document (JSON).
pub(crate) const DOCUMENT: &str = include_str!("openapi.json");
