//! The API's gate: what each route needs (a role, and the topic or table it names), and the
//! middleware that checks the caller's API token or member proof against it before any
//! handler runs.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::Node;
use crate::auth::{Caller, MEMBER_PROOF_HEADER, ProvenRequest, Role, reaches};
use crate::tables::{FORWARDED_HEADER, PROXIED_HEADER};

/// The prefix of the cluster's own topics, which only nodes write (after `keyed/` for the
/// keyed ones).
pub const CLUSTER_TOPIC_PREFIX: &str = "_canopy:";

/// Whether `topic` is one of the cluster's own topics.
pub fn is_cluster_topic(topic: &str) -> bool {
    topic.strip_prefix("keyed/").unwrap_or(topic).starts_with(CLUSTER_TOPIC_PREFIX)
}

/// What a route needs of its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: anyone may call it (`/livez`, `/readyz`).
    Open,
    /// A caller with at least `role`.
    Role {
        /// The least role.
        role: Role,
        /// What the route names.
        scope: Scope,
        /// Whether a member forwarding a request may call it with a proof instead of a token.
        member: bool,
    },
    /// Nobody through the API: a write to one of the cluster's own topics.
    ClusterTopic(String),
}

/// The name a route addresses, which a token limited to prefixes must reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A topic or table.
    Name(String),
    /// Nothing in particular, but harmless to every token (`/v1/status`).
    Any,
    /// The whole node (listings of every topic, peers, operations): tokens limited to prefixes
    /// do not reach it.
    Node,
}

/// What `method path` needs. `metrics_open` makes `/metrics` need nothing.
pub fn need(method: &Method, path: &str, metrics_open: bool) -> Need {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let reads = method == Method::GET || method == Method::HEAD;
    let role = |role: Role, scope: Scope| Need::Role { role, scope, member: false };
    let name = |name: &str| Scope::Name(name.to_string());
    match segments.as_slice() {
        ["livez"] | ["readyz"] => Need::Open,
        ["metrics"] if metrics_open => Need::Open,
        ["v1", "status"] => role(Role::Read, Scope::Any),
        ["v1", "topics"] if reads => role(Role::Read, Scope::Node),
        ["v1", "topics"] => role(Role::Write, Scope::Node),
        ["v1", "topics", topic, rest @ ..] => {
            let cluster = is_cluster_topic(topic);
            match rest {
                _ if reads => role(Role::Read, name(topic)),
                // Subscribing to a cluster topic only replicates it.
                [] if method == Method::PUT => role(Role::Write, name(topic)),
                _ if cluster => Need::ClusterTopic(topic.to_string()),
                [] | ["compact"] | ["indexes", ..] => role(Role::Admin, name(topic)),
                _ => role(Role::Write, name(topic)),
            }
        }
        ["v1", "tables"] if reads => role(Role::Read, Scope::Node),
        ["v1", "tables"] => role(Role::Admin, Scope::Node),
        ["v1", "tables", table, rest @ ..] => {
            let least = match rest {
                _ if reads => Role::Read,
                ["indexes", ..] => Role::Admin,
                _ => Role::Write,
            };
            Need::Role {
                role: least,
                scope: name(table),
                member: matches!(rest, ["kv", ..] | ["docs", ..] | ["batch"] | ["holds"] | ["indexes", ..]),
            }
        }
        ["v1", "admin", "topics", topic, "import"] if is_cluster_topic(topic) => Need::ClusterTopic(topic.to_string()),
        ["v1", "admin", ..] => role(Role::Admin, Scope::Node),
        _ => role(Role::Read, Scope::Node),
    }
}

/// Checks the caller of every request against what its route needs; a request that passes
/// carries its [`Caller`] as an extension.
pub(super) async fn authorize(State(node): State<Node>, request: Request, next: Next) -> Response {
    match admit(&node, request).await {
        Ok(request) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

async fn admit(node: &Node, request: Request) -> Result<Request, ApiError> {
    let inner = node.inner();
    let (role, scope, member) = match need(request.method(), request.uri().path(), inner.config.metrics_open) {
        Need::Open => return Ok(request),
        Need::Role { role, scope, member } => (role, scope, member),
        Need::ClusterTopic(topic) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{topic} is one of the cluster's own topics: only the nodes write it, each its own entries, \
                     never through the API"
                ),
            ));
        }
    };
    let mut request = request;
    if member && request.headers().contains_key(MEMBER_PROOF_HEADER) {
        let (proven, checked) = member_proof(node, request).await?;
        request = checked;
        if let Some(peer) = proven {
            request.extensions_mut().insert(Caller::Member(peer));
            return Ok(request);
        }
    }
    // Only a member's proven request may say it was forwarded or handed over.
    request.headers_mut().remove(FORWARDED_HEADER);
    request.headers_mut().remove(PROXIED_HEADER);
    let caller = match inner.guard.tokens() {
        None => Caller::Anyone,
        Some(tokens) => {
            let Some(secret) = bearer(request.headers()) else {
                return Err(unauthorized("this node needs an API token: send `Authorization: Bearer <token>`"));
            };
            tokens.caller(secret).ok_or_else(|| unauthorized("the API token is not one of this node's tokens"))?
        }
    };
    if let Caller::Token { name, role: held, prefixes } = &caller {
        if *held < role {
            return Err(forbidden(format!("API token {name} has role {held}; this route needs {role}")));
        }
        match &scope {
            Scope::Name(target) if !reaches(prefixes, target) => {
                return Err(forbidden(format!(
                    "API token {name} reaches only names starting with {}; not {target}",
                    prefixes.join(", ")
                )));
            }
            Scope::Node if !prefixes.is_empty() => {
                return Err(forbidden(format!(
                    "API token {name} is limited to name prefixes: it reaches only routes naming a topic or table"
                )));
            }
            _ => {}
        }
    }
    request.extensions_mut().insert(caller);
    Ok(request)
}

/// The member whose proof `request` carries, when the proof holds and its peer is a current
/// member; the request comes back with its body read (the proof covers it).
async fn member_proof(node: &Node, request: Request) -> Result<(Option<canopy_transport::PeerId>, Request), ApiError> {
    let (parts, body) = request.into_parts();
    let limit = node.inner().config.body_bytes_max;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the request body: {e}")))?;
    let header_text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let proof = header_text(MEMBER_PROOF_HEADER).to_string();
    let path_and_query = parts.uri.path_and_query().map_or(parts.uri.path(), |pq| pq.as_str());
    let proven = ProvenRequest {
        method: parts.method.as_str(),
        path_and_query,
        forwarding: [header_text(FORWARDED_HEADER), header_text(PROXIED_HEADER)],
        body: &body,
    };
    let now_ms = crate::auth::now_ms();
    let peer = match node.inner().guard.verify(&proof, &proven, now_ms) {
        Ok(peer) => {
            let checker = node.clone();
            let is_member = match node.is_member_cached(&peer.to_string()) {
                Some(is_member) => is_member,
                None => tokio::task::spawn_blocking(move || {
                    checker.members().is_ok_and(|members| members.iter().any(|m| m.peer_id == peer.to_string()))
                })
                .await
                .unwrap_or(false),
            };
            if !is_member {
                // Signed by its key, but not a member as far as this node knows: most likely a
                // member this node has not heard of yet (or one that just joined). The sender
                // tries another holder.
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("{peer} is not a member as far as this node knows yet: ask another member"),
                ));
            }
            Some(peer)
        }
        Err(clock @ crate::auth::ProofError::Clock { .. }) => {
            // The member's own proof, dated by a clock out of step with this one: the sender is
            // told why, and tries another holder.
            tracing::warn!(%clock, "refusing a member's forwarded request");
            return Err(ApiError::new(StatusCode::MISDIRECTED_REQUEST, clock.to_string()));
        }
        Err(reason) => {
            tracing::debug!(%reason, "a member proof that does not hold");
            None
        }
    };
    Ok((peer, Request::from_parts(parts, Body::from(body))))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|token| !token.is_empty())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(role: Role, scope: Scope) -> Need {
        Need::Role { role, scope, member: false }
    }

    fn name(name: &str) -> Scope {
        Scope::Name(name.to_string())
    }

    #[test]
    fn every_route_needs_its_role() {
        let cases = [
            (Method::GET, "/livez", Need::Open),
            (Method::GET, "/readyz", Need::Open),
            (Method::GET, "/metrics", role(Role::Read, Scope::Node)),
            (Method::GET, "/v1/status", role(Role::Read, Scope::Any)),
            (Method::GET, "/v1/topics", role(Role::Read, Scope::Node)),
            (Method::POST, "/v1/topics", role(Role::Write, Scope::Node)),
            (Method::PUT, "/v1/topics/a", role(Role::Write, name("a"))),
            (Method::DELETE, "/v1/topics/a", role(Role::Admin, name("a"))),
            (Method::GET, "/v1/topics/a/kv/k", role(Role::Read, name("a"))),
            (Method::PUT, "/v1/topics/a/kv/k", role(Role::Write, name("a"))),
            (Method::POST, "/v1/topics/a/batch", role(Role::Write, name("a"))),
            (Method::PATCH, "/v1/topics/a/docs/k", role(Role::Write, name("a"))),
            (Method::GET, "/v1/topics/a/docs", role(Role::Read, name("a"))),
            (Method::PATCH, "/v1/topics/_canopy:members/docs/k", Need::ClusterTopic("_canopy:members".into())),
            (Method::POST, "/v1/topics/a/compact", role(Role::Admin, name("a"))),
            (Method::GET, "/v1/topics/a/watch", role(Role::Read, name("a"))),
            (Method::PUT, "/v1/topics/_canopy:members", role(Role::Write, name("_canopy:members"))),
            (Method::PUT, "/v1/topics/_canopy:members/kv/zzz", Need::ClusterTopic("_canopy:members".into())),
            (Method::PUT, "/v1/topics/_canopy%3Atables/kv/t", Need::ClusterTopic("_canopy:tables".into())),
            (
                Method::PUT,
                "/v1/topics/keyed%2F_canopy:members/kv/zzz",
                Need::ClusterTopic("keyed/_canopy:members".into()),
            ),
            (Method::DELETE, "/v1/topics/_canopy:members", Need::ClusterTopic("_canopy:members".into())),
            (Method::GET, "/v1/topics/_canopy:members/kv", role(Role::Read, name("_canopy:members"))),
            (Method::POST, "/v1/tables", role(Role::Admin, Scope::Node)),
            (Method::GET, "/v1/tables/t", role(Role::Read, name("t"))),
            (Method::PUT, "/v1/tables/t/kv/k", Need::Role { role: Role::Write, scope: name("t"), member: true }),
            (Method::PATCH, "/v1/tables/t/docs/k", Need::Role { role: Role::Write, scope: name("t"), member: true }),
            (Method::GET, "/v1/tables/t/kv", Need::Role { role: Role::Read, scope: name("t"), member: true }),
            (Method::POST, "/v1/tables/t/batch", Need::Role { role: Role::Write, scope: name("t"), member: true }),
            (Method::GET, "/v1/tables/t/holds", Need::Role { role: Role::Read, scope: name("t"), member: true }),
            (Method::GET, "/v1/tables/t/placement", role(Role::Read, name("t"))),
            (Method::POST, "/v1/admin/backup", role(Role::Admin, Scope::Node)),
            (Method::POST, "/v1/admin/drain", role(Role::Admin, Scope::Node)),
            (Method::GET, "/v1/admin/drain", role(Role::Admin, Scope::Node)),
            (Method::GET, "/v1/admin/topics/a/export", role(Role::Admin, Scope::Node)),
            (Method::POST, "/v1/admin/topics/_canopy:tables/import", Need::ClusterTopic("_canopy:tables".into())),
            (Method::GET, "/v1/peers", role(Role::Read, Scope::Node)),
            (Method::GET, "/v1/members", role(Role::Read, Scope::Node)),
            (Method::GET, "/nowhere", role(Role::Read, Scope::Node)),
        ];
        for (method, path, expected) in cases {
            assert_eq!(need(&method, path, false), expected, "{method} {path}");
        }
        assert_eq!(need(&Method::GET, "/metrics", true), Need::Open);
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer canopy_x".parse().unwrap());
        assert_eq!(bearer(&headers), Some("canopy_x"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
