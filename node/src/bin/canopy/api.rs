//! The client side of `canopy`: a node's HTTP API as the client commands and the shell use it,
//! and how its answers are printed.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_node::wire::{self, BlockRef, ErrorBody, WatchEvent};
use serde_json::json;

use super::ClientArgs;

pub(crate) fn encode_path(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A node's HTTP API, and whether to print JSON.
pub(crate) struct Api {
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) base: String,
    pub(crate) json: bool,
    /// What the key commands address: `topics` or `tables`.
    collection: &'static str,
}

impl Api {
    pub(crate) fn new(args: &ClientArgs) -> anyhow::Result<Api> {
        Ok(Api {
            http: canopy_node::tls::blocking_client(args.token.as_deref(), args.cacert.as_deref())?,
            base: args.url.trim_end_matches('/').to_string(),
            json: args.json,
            collection: "topics",
        })
    }

    /// The same API, with the key commands (put, get, del, list) addressing sharded tables
    /// instead of topics.
    pub(crate) fn tables(self) -> Api {
        Api { collection: "tables", ..self }
    }

    /// The URL of `path` under topic (or table) `topic`, with `key` (when given) as the last
    /// segment.
    pub(crate) fn topic_url(&self, topic: &str, path: &str, key: Option<&str>) -> String {
        let collection = self.collection;
        match key {
            Some(key) => self.url(&format!("/v1/{collection}/{}/{path}/{}", encode_path(topic), encode_path(key))),
            None => self.url(&format!("/v1/{collection}/{}/{path}", encode_path(topic))),
        }
    }

    pub(crate) fn put(
        &self,
        topic: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<&str>,
        ack: Option<u32>,
    ) -> anyhow::Result<()> {
        let mut request = self.http.put(self.topic_url(topic, "kv", Some(key))).body(value);
        if let Some(ttl) = ttl {
            request = request.query(&[("ttl", ttl)]);
        }
        if let Some(ack) = ack {
            request = request.query(&[("ack", ack.to_string())]);
        }
        let reply: wire::Put = self.json(request)?;
        print(self.json, &reply, |reply| {
            let mut line = commit_line(Some(&BlockRef { cid: reply.cid, height: reply.height }));
            if let Some(at) = reply.expires_ms {
                line = format!("{line} expires {}", time_text(at));
            }
            if reply.acknowledged > 1 {
                line = format!("{line} acknowledged by {}", reply.acknowledged);
            }
            line
        });
        Ok(())
    }

    /// Prints the value of `key`: its raw bytes, ended by a newline when `line` or on a terminal.
    pub(crate) fn get(&self, topic: &str, key: &str, line: bool) -> anyhow::Result<()> {
        use std::io::Write as _;
        let bytes = self.send(self.http.get(self.topic_url(topic, "kv", Some(key))))?.bytes()?;
        if self.json {
            say(format_args!("{}", json!({ "key": key, "value": BASE64.encode(&bytes) })));
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            if !bytes.ends_with(b"\n") && (line || std::io::IsTerminal::is_terminal(&out)) {
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        Ok(())
    }

    pub(crate) fn delete(&self, topic: &str, key: &str) -> anyhow::Result<()> {
        let reply: BlockRef = self.json(self.http.delete(self.topic_url(topic, "kv", Some(key))))?;
        print(self.json, &reply, |reply| commit_line(Some(reply)));
        Ok(())
    }

    pub(crate) fn increment(&self, topic: &str, key: &str, n: i64) -> anyhow::Result<()> {
        let url = self.topic_url(topic, "counters", Some(key));
        let reply: wire::Incremented = self.json(self.http.post(url).json(&wire::Increment { add: n }))?;
        print(self.json, &reply, |reply| reply.value.to_string());
        Ok(())
    }

    pub(crate) fn count(&self, topic: &str, key: &str) -> anyhow::Result<()> {
        let reply: wire::Counter = self.json(self.http.get(self.topic_url(topic, "counters", Some(key))))?;
        print(self.json, &reply, |reply| reply.value.to_string());
        Ok(())
    }

    pub(crate) fn history(&self, topic: &str, key: &str, limit: usize) -> anyhow::Result<()> {
        let url = self.topic_url(topic, "history", Some(key));
        let reply: wire::History = self.json(self.http.get(url).query(&[("limit", limit.to_string())]))?;
        print(self.json, &reply, history_text);
        Ok(())
    }

    pub(crate) fn heads(&self, topic: &str) -> anyhow::Result<()> {
        let reply: wire::Heads = self.json(self.http.get(self.topic_url(topic, "heads", None)))?;
        print(self.json, &reply, |reply| {
            reply.heads.iter().map(|h| format!("{}\theight {}", h.cid, h.height)).collect::<Vec<_>>().join("\n")
        });
        Ok(())
    }

    /// Lists keys with `prefix` after `after`, at most `limit`, printing each page as it arrives
    /// so listing a large topic holds one page at a time.
    pub(crate) fn list(
        &self,
        topic: &str,
        prefix: &str,
        after: Option<String>,
        limit: Option<usize>,
    ) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let mut after_base64 = after.map(|key| BASE64.encode(key));
        let mut remaining = limit.unwrap_or(usize::MAX);
        let mut first = true;
        let mut failed = std::collections::BTreeSet::new();
        if self.json {
            write!(out, "[")?;
        }
        while remaining > 0 {
            let page_limit = remaining.min(1000).to_string();
            let mut query = vec![("prefix", prefix.to_string()), ("limit", page_limit)];
            if let Some(after) = &after_base64 {
                query.push(("after_base64", after.clone()));
            }
            let page: wire::Page = self.json(self.http.get(self.topic_url(topic, "kv", None)).query(&query))?;
            remaining = remaining.saturating_sub(page.entries.len());
            failed.extend(page.failed.iter().map(|failure| (failure.partition, failure.error.clone())));
            for entry in &page.entries {
                if self.json {
                    write!(out, "{}{}", if first { "" } else { "," }, json_text(entry))?;
                    first = false;
                } else {
                    let value = entry.value_bytes().unwrap_or_default();
                    let key = key_text(entry.key.as_deref(), &entry.key_base64);
                    writeln!(out, "{key}\t{}", String::from_utf8_lossy(&value))?;
                }
            }
            match page.next_base64 {
                Some(next) => after_base64 = Some(next),
                None => break,
            }
        }
        if self.json {
            writeln!(out, "]")?;
        }
        out.flush()?;
        if !failed.is_empty() {
            let named: Vec<String> = failed.iter().map(|(partition, error)| format!("{partition}: {error}")).collect();
            bail!("the listing lacks the keys of partitions no copy of which answered:\n{}", named.join("\n"));
        }
        Ok(())
    }

    /// Prints the changes of `topic` as they happen until `stop` fires (never, when it has no
    /// sender) or the stream ends. The stream is read on a thread of its own, which ends at
    /// the next event or keep-alive once nobody listens.
    pub(crate) fn watch<T>(&self, topic: &str, stop: &crossbeam_channel::Receiver<T>) -> anyhow::Result<()> {
        use std::io::BufRead as _;
        let response = self.send(self.http.get(self.topic_url(topic, "watch", None)))?;
        let (lines, changes) = crossbeam_channel::bounded::<anyhow::Result<String>>(1024);
        let json_output = self.json;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(response).lines() {
                let text = match line {
                    Ok(line) => match line.strip_prefix("data:") {
                        Some(data) => WatchEvent::parse(data.trim())
                            .map(|change| if json_output { json_text(&change) } else { change_text(&change) })
                            .map_err(anyhow::Error::from),
                        None => continue,
                    },
                    Err(error) => Err(error.into()),
                };
                if lines.send(text).is_err() {
                    return;
                }
            }
            let _ = lines.send(Err(anyhow::anyhow!("the node closed the watch stream")));
        });
        loop {
            crossbeam_channel::select! {
                recv(changes) -> change => match change {
                    Ok(Ok(text)) => say(format_args!("{text}")),
                    Ok(Err(error)) => return Err(error),
                    Err(_) => return Ok(()),
                },
                recv(stop) -> _ => return Ok(()),
            }
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn check(response: reqwest::blocking::Response) -> anyhow::Result<reqwest::blocking::Response> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().unwrap_or_default();
        match ErrorBody::message_in(&body) {
            Some(message) => bail!("{message} ({status})"),
            None => bail!("request failed with {status}"),
        }
    }

    pub(crate) fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<reqwest::blocking::Response> {
        let response = request.send().with_context(|| format!("cannot reach the node at {}", self.base))?;
        Api::check(response)
    }

    /// Sends `request` and reads the reply as a `T` of [`canopy_node::wire`].
    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<T> {
        Ok(self.send(request)?.json()?)
    }
}

pub(crate) fn read_input(source: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if source == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(source).with_context(|| format!("cannot read {source}"))?;
    }
    Ok(bytes)
}

/// Writes a line to standard output. A reader that went away (`canopy topics | head -1`)
/// ends nothing but the output: the line is dropped, where `println!` would panic.
pub(crate) fn say(line: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Prints a reply: as JSON with `--json`, else as `human` tells.
pub(crate) fn print<T: serde::Serialize>(json_output: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json_output {
        say(format_args!("{}", json_text(value)));
    } else {
        let text = human(value);
        if !text.is_empty() {
            say(format_args!("{text}"));
        }
    }
}

/// A reply as one line of JSON, as the node sent it (the wire structs keep its key order).
pub(crate) fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("a reply serializes: its fields are strings, numbers and lists")
}

/// A key from a listing or a change for people: its text, or its base64 bytes (marked) when it
/// is not UTF-8.
pub(crate) fn key_text(key: Option<&str>, key_base64: &str) -> String {
    match key {
        Some(text) => text.to_string(),
        None => format!("base64:{key_base64}"),
    }
}

/// A change from the watch stream, for people.
pub(crate) fn change_text(change: &WatchEvent) -> String {
    let change = match change {
        WatchEvent::Counter(counter) => {
            let key = key_text(counter.counter.as_deref(), &counter.key_base64);
            return format!("count {key} = {}", counter.value);
        }
        WatchEvent::Doc(change) => {
            let key = key_text(change.doc.as_deref(), &change.key_base64);
            return match &change.value {
                Some(doc) => format!("doc {key} = {}", serde_json::Value::Object(doc.clone())),
                None => format!("doc {key} deleted"),
            };
        }
        WatchEvent::Key(change) => change,
    };
    let key = key_text(change.key.as_deref(), &change.key_base64);
    let value = change
        .value
        .as_deref()
        .map(|value| String::from_utf8_lossy(&BASE64.decode(value).unwrap_or_default()).into_owned());
    match (change.expired, value) {
        (false, Some(value)) => format!("put {key} = {value}"),
        (false, None) => format!("del {key}"),
        (true, Some(value)) => format!("expired {key}, now = {value}"),
        (true, None) => format!("expired {key}"),
    }
}

/// A wall-clock time in milliseconds since the Unix epoch, as RFC 3339 in UTC.
pub(crate) fn time_text(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// One line a version: height, block, and the value (or `(deleted)`).
pub(crate) fn history_text(reply: &wire::History) -> String {
    reply
        .versions
        .iter()
        .map(|version| {
            let value = match &version.value {
                Some(value) => String::from_utf8_lossy(&BASE64.decode(value).unwrap_or_default()).into_owned(),
                None => "(deleted)".into(),
            };
            let line = format!("{}\t{}\t{value}", version.height, version.cid);
            match version.expires_ms {
                Some(at) => format!("{line}\t(expires {})", time_text(at)),
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The block a write made, for people; `None`: it changed nothing.
pub(crate) fn commit_line(commit: Option<&BlockRef>) -> String {
    match commit {
        Some(commit) => format!("{} height {}", commit.cid, commit.height),
        None => "nothing changed".into(),
    }
}
