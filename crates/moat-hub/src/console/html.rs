//! HTML building: one escaping rule for every interpolated value, the page frame, and the
//! headers every console response carries.
//!
//! Pages are strings built with `write!`. Nothing from a device, an operator or the registry
//! reaches the output except through [`Esc`] (text and attribute values) or [`UrlPart`]
//! (a path segment or query value inside an attribute). There is no inline script, no event
//! handler attribute and no `style` attribute anywhere: the Content-Security-Policy below
//! forbids them, and the console's tests parse every page for them.

use std::fmt::{self, Write as _};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::Current;

/// The Content-Security-Policy of every console response: scripts and styles from the
/// hub's own origin only (so no inline script or style), images from it or `data:` (the
/// charts), no framing, forms post only back to the hub.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub(crate) struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters: safe as a URL path segment
/// or query value, and (having no markup characters left) inside an HTML attribute.
pub(crate) struct UrlPart<'a>(pub &'a str);

impl fmt::Display for UrlPart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                f.write_char(char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// A UTC time from milliseconds since the epoch: `2026-11-22 07:48:00Z`.
pub(crate) fn time(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "-".into(),
    }
}

/// The `<time>` element for `ms`.
pub(crate) fn time_el(ms: u64) -> String {
    let t = time(ms);
    format!("<time>{}</time>", Esc(&t))
}

/// The console's sections, for the navigation bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Devices,
    Alerts,
    Policies,
    Tokens,
    Updates,
    Audit,
    None,
}

const NAV: [(Section, &str, &str); 7] = [
    (Section::Overview, "/console/", "Fleet"),
    (Section::Devices, "/console/devices", "Devices"),
    (Section::Alerts, "/console/alerts", "Alerts"),
    (Section::Policies, "/console/policies", "Policies"),
    (Section::Tokens, "/console/tokens", "Enrollment"),
    (Section::Updates, "/console/updates", "Updates"),
    (Section::Audit, "/console/audit", "Audit"),
];

/// The assets' version, for cache busting: changes whenever their content does.
pub(crate) fn asset_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(super::CSS.as_bytes());
        ctx.update(super::JS.as_bytes());
        moat_audit::hex(&ctx.finish().as_ref()[..6])
    })
}

/// A whole page: head (one stylesheet, one deferred script), navigation, the signed-in
/// operator and a log-out form, then `main`.
pub(crate) fn page(title: &str, section: Section, who: Option<&Current>, main: &str) -> String {
    let v = asset_version();
    let mut out = String::with_capacity(main.len() + 2048);
    let live = if who.is_some() { "on" } else { "off" };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Moat</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css?v={v}\">\
         <script src=\"/console/assets/console.js?v={v}\" defer></script></head>\
         <body data-live=\"{live}\"><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header class=\"top\"><a class=\"brand\" href=\"/console/\">Moat</a>",
        Esc(title)
    );
    if let Some(who) = who {
        out.push_str("<nav aria-label=\"Sections\"><ul>");
        for (s, href, label) in NAV {
            let current = if s == section {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(out, "<li><a href=\"{href}\"{current}>{label}</a></li>");
        }
        let _ = write!(
            out,
            "</ul></nav><div class=\"who\"><span>{} ({})</span>\
             <span id=\"live-status\" class=\"live\" role=\"status\" aria-live=\"polite\">live updates off</span>\
             <form method=\"post\" action=\"/console/logout\">{}\
             <button type=\"submit\" class=\"link\">Log out</button></form></div>",
            Esc(who.caller.actor.trim_start_matches("operator:")),
            who.caller.role.as_str(),
            csrf_field(who)
        );
    }
    let _ = writeln!(
        out,
        "</header><main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{main}</main></body></html>",
        Esc(title)
    );
    out
}

/// The hidden CSRF field every POST form carries.
pub(crate) fn csrf_field(who: &Current) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        Esc(&who.csrf)
    )
}

/// A page response: `Cache-Control: no-store` (the security headers come from the
/// console's middleware).
pub(crate) fn respond(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A 303 to `to` (a path on this hub).
pub(crate) fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error page with `status`.
pub(crate) fn error_page(status: StatusCode, who: Option<&Current>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let main = format!(
        "<p class=\"notice bad\">{}</p><p><a href=\"/console/\">Back to the fleet</a></p>",
        Esc(message)
    );
    respond(status, page(title, Section::None, who, &main))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            Esc("<a href=\"x\" onclick='y'>&</a>").to_string(),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(Esc("plain").to_string(), "plain");
        assert_eq!(Esc("é<").to_string(), "é&lt;");
    }

    #[test]
    fn url_parts_keep_only_unreserved() {
        assert_eq!(UrlPart("dev-1.a_b~").to_string(), "dev-1.a_b~");
        assert_eq!(UrlPart("a/b c\"<").to_string(), "a%2Fb%20c%22%3C");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20Z");
    }
}
