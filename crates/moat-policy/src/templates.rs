//! Built-in policy templates. Their full text is in the crate documentation.

use crate::document::PolicyDocument;

/// The names of the built-in templates.
pub const TEMPLATES: &[&str] = &[
    "sensor",
    "actuator",
    "gateway",
    "backend-service",
    "quarantine",
    "namespace",
];

/// The TOML text of a built-in template, as shown in the crate documentation.
pub fn template_text(name: &str) -> Option<&'static str> {
    Some(match name {
        "sensor" => include_str!("templates/sensor.toml"),
        "actuator" => include_str!("templates/actuator.toml"),
        "gateway" => include_str!("templates/gateway.toml"),
        "backend-service" => include_str!("templates/backend-service.toml"),
        "quarantine" => include_str!("templates/quarantine.toml"),
        "namespace" => include_str!("templates/namespace.toml"),
        _ => return None,
    })
}

/// A built-in template, parsed, named after itself; `None` for an unknown name.
pub fn template(name: &str) -> Option<PolicyDocument> {
    // The texts are fixed and a test parses each; `ok()` only guards a broken build.
    PolicyDocument::from_toml(name, template_text(name)?).ok()
}
