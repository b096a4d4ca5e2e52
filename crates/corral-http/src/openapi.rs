//! Completes an OpenAPI document so that it says everything a Corral server can answer, for
//! clients generated from it: each path parameter declared (names with their pattern), the
//! bearer security scheme (and which paths need no token), and, for every operation, each
//! error status the shared layers can produce (401 from the token check, 400/413/415/422 from
//! the body and path extractors, 404, 409, 500, 503) with the JSON error document.

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi, Ref, Required, ResponseBuilder, Type};
use utoipa::{PartialSchema, ToSchema};

use corral_api::ErrorBody;

/// The name of the bearer token scheme in the documents.
pub const TOKEN_SCHEME: &str = "token";

/// Path parameters whose values are [`Name`](corral_api::types::Name)s: documented with the
/// pattern a name must match.
const NAME_PARAMS: &[&str] = &["name", "host", "vm", "cluster", "profile", "template"];

/// A name as a regular expression (see `corral_api::names::is_valid_name`).
pub const NAME_PATTERN: &str = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$";

/// The [`utoipa::Modify`] that completes a document; `public` are the paths served without a
/// token.
#[derive(Debug, Clone, Copy)]
pub struct Conformance {
    pub public: &'static [&'static str],
}

fn error(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build(),
        )
        .build()
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}').map(String::from)).collect()
}

fn complete(op: &mut Operation, method: &str, params: &[String], public: bool) {
    let declared: Vec<String> = op
        .parameters
        .iter()
        .flatten()
        .filter_map(|p| match p {
            utoipa::openapi::RefOr::T(p) if p.parameter_in == ParameterIn::Path => Some(p.name.clone()),
            _ => None,
        })
        .collect();
    for p in params.iter().filter(|p| !declared.contains(p)) {
        let mut schema = ObjectBuilder::new().schema_type(Type::String);
        if NAME_PARAMS.contains(&p.as_str()) {
            schema = schema.pattern(Some(NAME_PATTERN)).min_length(Some(1)).max_length(Some(63));
        }
        let param = ParameterBuilder::new()
            .name(p)
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .schema(Some(schema))
            .build();
        op.parameters.get_or_insert_with(Vec::new).push(param.into());
    }
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p, utoipa::openapi::RefOr::T(p) if p.parameter_in == ParameterIn::Query));
    let mut codes: Vec<(&str, &str)> = vec![
        ("500", "an internal fault of Corral or the machine"),
        ("503", "not the leader (see the x-corral-leader header), or a host cannot be reached: try again"),
    ];
    if public {
        op.security = Some(vec![SecurityRequirement::default()]);
    } else {
        codes.push(("401", "no valid API token (Authorization: Bearer TOKEN)"));
    }
    if !public {
        codes.push(("404", "no such object (named in the path or the body)"));
    }
    if !params.is_empty() || has_query || op.request_body.is_some() {
        codes.push(("422", "a value in the path, query or body is invalid: the message names it"));
    }
    if op.request_body.is_some() {
        codes.push(("400", "the body is not valid JSON"));
        codes.push(("413", "the body is too large"));
        codes.push(("415", "the body is not sent as application/json"));
    }
    if matches!(method, "post" | "put" | "delete" | "patch") {
        codes.push(("409", "the object's state does not allow this now (busy, exists, too late)"));
    }
    for (code, why) in codes {
        op.responses.responses.entry(code.to_string()).or_insert_with(|| error(why).into());
    }
}

impl utoipa::Modify for Conformance {
    fn modify(&self, api: &mut OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            TOKEN_SCHEME,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let mut schemas = vec![(ErrorBody::name().to_string(), ErrorBody::schema())];
        <ErrorBody as ToSchema>::schemas(&mut schemas);
        c.schemas.extend(schemas);
        api.security = Some(vec![SecurityRequirement::new(TOKEN_SCHEME, Vec::<String>::new())]);
        for (path, item) in api.paths.paths.iter_mut() {
            let params = path_params(path);
            let public = self.public.contains(&path.as_str());
            for (method, op) in [
                ("get", item.get.as_mut()),
                ("put", item.put.as_mut()),
                ("post", item.post.as_mut()),
                ("delete", item.delete.as_mut()),
                ("patch", item.patch.as_mut()),
            ] {
                if let Some(op) = op {
                    complete(op, method, &params, public);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_pattern_is_the_name_rule() {
        // The rule in words and in the pattern agree on these.
        for (n, ok) in [("a", true), ("web-1", true), ("1a", false), ("a-", false), ("A", false), ("", false)] {
            assert_eq!(corral_api::names::is_valid_name(n), ok, "{n}");
        }
        assert_eq!(path_params("/v1/vms/{name}/actions/{action}"), ["name", "action"]);
    }
}
