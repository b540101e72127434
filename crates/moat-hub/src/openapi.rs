//! The OpenAPI 3.1 document served at `/api/openapi.json`.
//!
//! It is written by hand (`openapi.json`) from what the handlers in `api.rs` and `est.rs` do.
//! The tests below hold it to the router's source so that it cannot drift silently: every
//! route and method is documented and nothing else is, and every operation's `x-moat-role`
//! is the role its handler's `Authed<...>` extractor demands.

/// The document (JSON).
pub(crate) const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::DOCUMENT;

    const API_SOURCE: &str = include_str!("api.rs");
    const EST_SOURCE: &str = include_str!("est.rs");
    /// Routers merged into `api::router` besides EST: (`.merge(...)` call, its source).
    const MERGED: [(&str, &str); 2] = [
        ("crate::ota::router()", include_str!("ota/rest.rs")),
        (
            "crate::ota::campaign_router()",
            include_str!("ota/campaign_api.rs"),
        ),
    ];
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];

    /// A route as the router's source declares it.
    #[derive(Debug)]
    struct Route {
        path: String,
        method: String,
        /// The handler's name, or the closure's text.
        handler: String,
        /// The source file the route (and so its handler) is in.
        source: &'static str,
    }

    /// Index just past the string literal that starts (with `"`) at `i`.
    fn end_of_string(s: &[u8], mut i: usize) -> usize {
        i += 1;
        while i < s.len() {
            match s[i] {
                b'\\' => i += 2,
                b'"' => return i + 1,
                _ => i += 1,
            }
        }
        panic!("unterminated string literal");
    }

    /// Index of the bracket closing the one at `open`, skipping string literals and line
    /// comments. (Char literals and lifetimes are not expected in router code.)
    fn closing(s: &[u8], open: usize) -> usize {
        let mut depth = 0usize;
        let mut i = open;
        while i < s.len() {
            match s[i] {
                b'"' => {
                    i = end_of_string(s, i);
                    continue;
                }
                b'/' if s.get(i + 1) == Some(&b'/') => {
                    while i < s.len() && s[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced brackets");
    }

    /// Index of the `;` ending the statement `code` starts with (outside brackets and strings).
    fn statement_end(code: &str) -> usize {
        let b = code.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'"' => i = end_of_string(b, i),
                b'(' | b'[' | b'{' => i = closing(b, i) + 1,
                b';' => return i,
                _ => i += 1,
            }
        }
        panic!("unterminated statement");
    }

    /// The body (between braces) of the function whose declaration contains `signature`.
    fn function_body<'a>(source: &'a str, signature: &str) -> &'a str {
        let at = source
            .find(signature)
            .unwrap_or_else(|| panic!("no `{signature}` in the source"));
        let open = at + source[at..].find('{').expect("function body");
        &source[open + 1..closing(source.as_bytes(), open)]
    }

    /// The contents of the string literal that `text` starts with (after whitespace), and
    /// the text after it.
    fn leading_string(text: &str) -> (&str, &str) {
        let text = text.trim_start();
        assert!(
            text.starts_with('"'),
            "expected a string literal at {text:.40}"
        );
        let end = end_of_string(text.as_bytes(), 0);
        (&text[1..end - 1], &text[end..])
    }

    /// Every `.route("PATH", method(handler).method(handler)...)` in `code`.
    fn routes_in(code: &str, prefix: &str, source: &'static str) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut from = 0;
        while let Some(k) = code[from..].find(".route(") {
            let open = from + k + ".route".len();
            let close = closing(code.as_bytes(), open);
            let (path, rest) = leading_string(&code[open + 1..close]);
            let path = format!("{prefix}{path}");
            let b = rest.as_bytes();
            let before = routes.len();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'"' => i = end_of_string(b, i),
                    b'(' | b'[' | b'{' => i = closing(b, i) + 1,
                    c if c.is_ascii_alphabetic() || c == b'_' => {
                        let start = i;
                        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                            i += 1;
                        }
                        let ident = &rest[start..i];
                        if b.get(i) == Some(&b'(') {
                            let end = closing(b, i);
                            assert!(
                                METHODS.contains(&ident),
                                "route {path}: `{ident}(...)` is not a method this test knows; \
                                 teach it, and document the route"
                            );
                            routes.push(Route {
                                path: path.clone(),
                                method: ident.to_owned(),
                                handler: rest[i + 1..end].trim().to_owned(),
                                source,
                            });
                            i = end + 1;
                        }
                    }
                    _ => i += 1,
                }
            }
            assert!(routes.len() > before, "route {path}: no method found");
            from = close;
        }
        routes
    }

    /// Every route the hub serves, read from the source of `api::router` and `est::router`.
    fn code_routes() -> Vec<Route> {
        let api = function_body(API_SOURCE, "fn router(");
        for unsupported in [".nest_service(", ".route_service(", ".fallback("] {
            assert!(
                !api.contains(unsupported),
                "teach this test about `{unsupported}`"
            );
        }
        // The one nested router: `.nest("PREFIX", NAME)` over `let NAME = Router::new()...;`.
        assert_eq!(
            api.matches(".nest(").count(),
            1,
            "expected exactly one nested router"
        );
        let nest = api.find(".nest(").expect("nest") + ".nest(".len();
        let (prefix, rest) = leading_string(&api[nest..]);
        let name = rest
            .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .expect("nested router's name");
        let let_at = api
            .find(&format!("let {name} = "))
            .unwrap_or_else(|| panic!("no `let {name} = ` in api::router"));
        let statement_end = let_at + statement_end(&api[let_at..]);
        let nested = &api[let_at..statement_end];
        let outer = format!("{}{}", &api[..let_at], &api[statement_end..]);
        assert!(
            outer.contains(".merge(crate::est::router())"),
            "api::router no longer merges est::router; update this test"
        );
        let mut routes = routes_in(nested, prefix, API_SOURCE);
        routes.extend(routes_in(&outer, "", API_SOURCE));
        routes.extend(routes_in(
            function_body(EST_SOURCE, "fn router("),
            "",
            EST_SOURCE,
        ));
        for (call, source) in MERGED {
            assert!(
                outer.contains(&format!(".merge({call})")),
                "api::router no longer merges {call}; update this test"
            );
            routes.extend(routes_in(function_body(source, "fn router("), "", source));
        }
        routes
    }

    /// The role a handler's `Authed<ROLE>` extractor demands, if it has one.
    fn handler_role(route: &Route) -> Option<&'static str> {
        let name = &route.handler;
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            // A closure: no extractors.
            assert!(
                !name.contains("Authed"),
                "{}: authenticated closure",
                route.path
            );
            return None;
        }
        let signature = format!("fn {name}(");
        let at = route
            .source
            .find(&signature)
            .unwrap_or_else(|| panic!("handler `{name}` of {} not found", route.path))
            + signature.len()
            - 1;
        let params = &route.source[at..closing(route.source.as_bytes(), at)];
        let role = params.split_once("Authed<")?.1.split('>').next()?.trim();
        Some(match role {
            "AUDITOR" => "auditor",
            "OPERATOR" => "operator",
            "ADMIN" => "admin",
            other => panic!("handler `{name}`: unknown role {other}"),
        })
    }

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// (path, method) -> operation, for every operation in the document.
    fn operations(doc: &Value) -> BTreeMap<(String, String), &Value> {
        let paths = doc["paths"].as_object().expect("paths");
        let mut out = BTreeMap::new();
        for (path, item) in paths {
            for (key, op) in item.as_object().expect("path item") {
                if METHODS.contains(&key.as_str()) {
                    out.insert((path.clone(), key.clone()), op);
                }
            }
        }
        out
    }

    /// Follows a `$ref` (local only) once.
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => doc
                .pointer(r.strip_prefix('#').expect("local $ref"))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
            None => v,
        }
    }

    #[test]
    fn openapi_document_is_version_3_1() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi field");
        assert!(version.starts_with("3.1"), "openapi {version}");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    }

    #[test]
    fn openapi_documents_exactly_the_routes_in_the_code() {
        let doc = document();
        let code: BTreeSet<(String, String)> = code_routes()
            .into_iter()
            .map(|r| (r.path, r.method))
            .collect();
        assert!(
            code.contains(&("/api/v1/login".to_owned(), "post".to_owned())),
            "{code:?}"
        );
        assert!(code.contains(&(
            "/.well-known/est/simpleenroll".to_owned(),
            "post".to_owned()
        )));
        let documented: BTreeSet<(String, String)> = operations(&doc).into_keys().collect();
        let missing: Vec<_> = code.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&code).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routes missing from openapi.json: {missing:?}; \
             documented but not in the code: {extra:?}"
        );
    }

    #[test]
    fn openapi_roles_and_security_match_the_handlers() {
        let doc = document();
        let ops = operations(&doc);
        for route in code_routes() {
            // Undocumented routes are reported by the test above.
            let Some(op) = ops.get(&(route.path.clone(), route.method.clone())) else {
                continue;
            };
            let role = handler_role(&route);
            let what = format!("{} {}", route.method, route.path);
            assert_eq!(op["x-moat-role"].as_str(), role, "{what}: x-moat-role");
            let security = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: security"));
            let bearer = security.iter().any(|s| s.get("bearer").is_some());
            assert_eq!(
                bearer,
                role.is_some(),
                "{what}: bearer security iff a role is needed"
            );
            let responses = &op["responses"];
            if let Some(role) = role {
                assert!(responses.get("401").is_some(), "{what}: 401");
                // Every caller is at least an auditor, so auditor operations never answer 403.
                assert_eq!(
                    responses.get("403").is_some(),
                    role != "auditor",
                    "{what}: 403"
                );
                let description = op["description"].as_str().unwrap_or_default();
                assert!(
                    description.contains(&format!("**{role}**")),
                    "{what}: role in prose"
                );
            }
        }
    }

    #[test]
    fn openapi_operations_are_well_formed() {
        let doc = document();
        let mut ids = BTreeSet::new();
        for ((path, method), op) in operations(&doc) {
            let what = format!("{method} {path}");
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: operationId"));
            assert!(
                id.starts_with(|c: char| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{what}: operationId {id} is not camelCase"
            );
            assert!(ids.insert(id.to_owned()), "operationId {id} is not unique");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{what}: no success response"
            );
            // Every `{param}` in the path is declared (on the path item or the operation).
            let declared: BTreeSet<&str> = [&doc["paths"][&path]["parameters"], &op["parameters"]]
                .into_iter()
                .filter_map(Value::as_array)
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, in_path, "{what}: path parameters");
        }
    }

    #[test]
    fn openapi_references_resolve() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(map) => {
                    if map.get("$ref").is_some() {
                        resolve(doc, v);
                    }
                    map.values().for_each(|x| walk(doc, x));
                }
                Value::Array(items) => items.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }
}
