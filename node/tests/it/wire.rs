//! The API's bodies byte for byte: a change to the JSON a client reads shows up here. Each reply
//! is also read into its `canopy_node::wire` struct and written back, which must give the same
//! bytes, so the structs the clients use hold every field the server sends.

use crate::common;

use canopy_node::wire;
use common::{NodeProcess, wait_until};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The body of `GET path`, with the status it must have.
fn text(node: &NodeProcess, path: &str, status: StatusCode) -> String {
    let response = node.http.get(node.url(path)).send().unwrap();
    assert_eq!(response.status(), status, "GET {path}");
    response.text().unwrap()
}

/// Reads `body` as a `T` and checks that writing it back gives `body` again.
fn round_trip<T: Serialize + DeserializeOwned>(body: &str) -> T {
    let reply: T = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body} does not read as the struct: {e}"));
    assert_eq!(serde_json::to_string(&reply).unwrap(), body, "the struct loses or reorders a field");
    reply
}

#[test]
fn topic_replies_keep_their_exact_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[], &["t"]);

    let put = node.http.put(node.url("/v1/topics/t/kv/a")).body("1").send().unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let put = put.text().unwrap();
    let cid = round_trip::<wire::Put>(&put).cid.to_string();
    assert!(cid.starts_with('b'), "a CID in base32: {cid}");
    assert_eq!(put, format!(r#"{{"acknowledged":1,"causal_token":"t~{cid}","cid":"{cid}","height":1}}"#));

    let heads = text(&node, "/v1/topics/t/heads", StatusCode::OK);
    assert_eq!(heads, format!(r#"{{"heads":[{{"cid":"{cid}","height":1}}]}}"#));
    round_trip::<wire::Heads>(&heads);

    node.put("t", "b", "2");
    let page = text(&node, "/v1/topics/t/kv?limit=1", StatusCode::OK);
    let token = round_trip::<wire::Page>(&page).causal_token.unwrap();
    assert!(token.starts_with("t~") && !token.contains(&cid), "the token of the heads after both writes: {token}");
    assert_eq!(
        page,
        format!(
            r#"{{"causal_token":"{token}","entries":[{{"key":"a","key_base64":"YQ==","value":"MQ=="}}],"next":"a","next_base64":"YQ=="}}"#
        )
    );
    let last = text(&node, "/v1/topics/t/kv?after=a", StatusCode::OK);
    assert_eq!(
        last,
        format!(
            r#"{{"causal_token":"{token}","entries":[{{"key":"b","key_base64":"Yg==","value":"Mg=="}}],"next":null,"next_base64":null}}"#
        )
    );

    let missing = text(&node, "/v1/topics/t/kv/nope", StatusCode::NOT_FOUND);
    assert_eq!(missing, r#"{"error":"key \"nope\" not found in topic t"}"#);
    let error: wire::ErrorBody = round_trip(&missing);
    assert_eq!(wire::ErrorBody::message_in(missing.as_bytes()), Some(error.error));

    let topics = text(&node, "/v1/topics", StatusCode::OK);
    let summaries: Vec<wire::TopicSummary> = round_trip(&topics);
    let head = &summaries[0].heads[0];
    assert_eq!(
        topics,
        format!(
            r#"[{{"heads":[{{"cid":"{}","height":2}}],"keys":2,"max_height":2,"mode":"open","topic":"t"}}]"#,
            head.cid
        )
    );

    let status = text(&node, "/v1/status", StatusCode::OK);
    let reply: wire::Status = round_trip(&status);
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&status).unwrap();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, ["author", "listen", "peer_id", "peers", "topics", "version"]);
    assert_eq!(reply.peer_id.to_string(), node.peer_id);
    assert_eq!(reply.author.to_string(), node.peer_id);
    assert_eq!(reply.topics, 1);
    assert!(status.starts_with(&format!(r#"{{"author":"{}","listen":["#, node.peer_id)), "{status}");
}

#[test]
fn table_replies_keep_their_exact_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with(dir.path(), &[], &[], &["--tables", "--member-ttl-s", "3"]);
    wait_until("the node lists itself as a member", || {
        node.json("/v1/members")["members"].as_array().is_some_and(|members| members.len() == 1)
    });

    let members = text(&node, "/v1/members", StatusCode::OK);
    let member = &round_trip::<wire::Members>(&members).members[0];
    assert_eq!(member.peer_id.to_string(), node.peer_id);
    assert_eq!(member.api, node.api);
    let addresses = serde_json::to_string(&member.addresses).unwrap();
    assert_eq!(
        members,
        format!(
            r#"{{"members":[{{"addresses":{addresses},"api":"{}","joined_ms":{},"peer_id":"{}"}}]}}"#,
            node.api, member.joined_ms, node.peer_id
        )
    );

    let body = wire::CreateTable { name: "users".into(), partitions: 2, replicas: 1 };
    let created = node.http.post(node.url("/v1/tables")).json(&body).send().unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created = created.text().unwrap();
    assert_eq!(created, r#"{"name":"users","partitions":2,"replicas":1}"#);
    round_trip::<wire::TableDef>(&created);

    let tables = text(&node, "/v1/tables", StatusCode::OK);
    assert_eq!(tables, r#"{"tables":[{"name":"users","partitions":2,"replicas":1}]}"#);
    round_trip::<wire::Tables>(&tables);

    let written = node.http.put(node.url("/v1/tables/users/kv/alice")).body("admin").send().unwrap();
    assert_eq!(written.status(), StatusCode::OK);
    let written = written.text().unwrap();
    let reply: wire::Written = round_trip(&written);
    assert_eq!(
        written,
        format!(
            r#"{{"acknowledged":1,"causal_token":"{}~{}","cid":"{}","height":1,"node":"{}","partition":{}}}"#,
            reply.partition, reply.cid, reply.cid, node.peer_id, reply.partition
        )
    );

    let refused = node.http.post(node.url("/v1/tables")).body("{}").send().unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused = refused.text().unwrap();
    assert!(refused.starts_with(r#"{"error":"a table is {\"name\": \"...\", "#), "{refused}");
    round_trip::<wire::ErrorBody>(&refused);
}
