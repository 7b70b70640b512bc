//! `canopy doc ...`: documents, JSON objects whose top-level fields merge on their own.

use canopy_node::wire;
use clap::Subcommand;

use super::ClientArgs;
use super::api::{Api, encode_path, print, read_input};

#[derive(Subcommand)]
pub(crate) enum DocCommand {
    /// Make JSON (an object; `-` reads it from standard input) the document KEY of topic T.
    Put {
        topic: String,
        key: String,
        #[arg(value_name = "JSON")]
        body: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Apply JSON, a merge patch (RFC 7396: `null` removes a field), to the document KEY of
    /// topic T; fields it does not name are left as they are.
    Patch {
        topic: String,
        key: String,
        #[arg(value_name = "JSON")]
        body: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Print the document KEY of topic T as JSON.
    Get {
        topic: String,
        key: String,
        /// Read only once this node holds this causal token (a write's or an earlier read's).
        #[arg(long)]
        causal: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete the document KEY of topic T.
    Del {
        topic: String,
        key: String,
        /// Copies that must hold the delete before it is acknowledged [default: the node's write_ack].
        #[arg(long)]
        ack: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the documents of topic T meeting every CONDITION (`env=prod`, `port>=80`,
    /// `name^=api-`, `env=prod|staging`, `meta.region!=eu`), one JSON line each.
    Find {
        topic: String,
        #[arg(value_name = "CONDITION", required = true)]
        conditions: Vec<String>,
        /// Order by this field (`-FIELD`: largest first) rather than by key.
        #[arg(long, allow_hyphen_values = true)]
        order: Option<String>,
        /// Most documents printed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Then follow the documents meeting the conditions: print each one's change as it
        /// happens (`"doc": null` once one no longer meets them or is deleted).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Declare, drop and list the indexes of topic T's documents.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// List the documents of topic T, one JSON line each (`{"key": ..., "doc": ...}`).
    Ls {
        topic: String,
        /// Most documents printed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `canopy doc index ...`.
#[derive(clap::Subcommand)]
pub(crate) enum IndexCommand {
    /// Declare the index NAME of topic T on the documents' field PATH (a dot goes into a nested
    /// object: `meta.region`), on every node of the topic; each builds it from its documents,
    /// then queries on the field read it instead of every document.
    Create {
        topic: String,
        name: String,
        path: String,
        /// The type of the values indexed; a field of another type is not in the index.
        #[arg(long = "type", default_value = "string", value_parser = ["string", "number", "bool"])]
        kind: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop the index NAME of topic T on every node.
    Drop {
        topic: String,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List topic T's indexes on this node: name, path, type, and whether built (with the
    /// document entries read so far while building).
    Ls {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How a put or a patch is written.
#[derive(clap::Args)]
pub(crate) struct WriteArgs {
    /// The fields written expire after this long (`30s`, `5m`, `1h`).
    #[arg(long)]
    ttl: Option<String>,
    /// Copies that must hold the write before it is acknowledged [default: the node's write_ack].
    #[arg(long)]
    ack: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn run(command: DocCommand) -> anyhow::Result<()> {
    match command {
        DocCommand::Put { topic, key, body, write } => {
            let body = if body == "-" { read_input("-")? } else { body.into_bytes() };
            Api::new(&write.client)?.doc_write(&topic, &key, body, reqwest::Method::PUT, write.ack, write.ttl)
        }
        DocCommand::Patch { topic, key, body, write } => {
            let body = if body == "-" { read_input("-")? } else { body.into_bytes() };
            Api::new(&write.client)?.doc_write(&topic, &key, body, reqwest::Method::PATCH, write.ack, write.ttl)
        }
        DocCommand::Get { topic, key, causal, client } => Api::new(&client)?.doc_get(&topic, &key, causal),
        DocCommand::Del { topic, key, ack, client } => Api::new(&client)?.doc_delete(&topic, &key, ack),
        DocCommand::Find { topic, conditions, order, limit, follow, client } => {
            let api = Api::new(&client)?;
            let mut query: Vec<(&str, String)> = conditions.iter().map(|c| ("where", c.clone())).collect();
            query.extend(order.map(|order| ("order", order)));
            let (printed, scanned, index) = api.doc_pages(&topic, &query, limit, Cursor::Next)?;
            let how = match index {
                Some(index) => format!("through index {index}"),
                None => "scanning: no built index serves these conditions".to_string(),
            };
            eprintln!("{printed} found, {scanned} documents read {how}");
            if follow {
                api.doc_follow(&topic, &conditions)?;
            }
            Ok(())
        }
        DocCommand::Ls { topic, limit, client } => {
            Api::new(&client)?.doc_pages(&topic, &[], limit, Cursor::NextBase64).map(|_| ())
        }
        DocCommand::Index { command } => index(command),
    }
}

fn index(command: IndexCommand) -> anyhow::Result<()> {
    match command {
        IndexCommand::Create { topic, name, path, kind, client } => {
            Api::new(&client)?.index_change(&topic, &name, Some((&path, &kind)))
        }
        IndexCommand::Drop { topic, name, client } => Api::new(&client)?.index_change(&topic, &name, None),
        IndexCommand::Ls { topic, client } => Api::new(&client)?.index_list(&topic),
    }
}

impl Api {
    /// Declares the index `name` of `topic` on the field `path` of type `kind` (`Some`), or
    /// drops it, and prints the block that did.
    pub(crate) fn index_change(&self, topic: &str, name: &str, declare: Option<(&str, &str)>) -> anyhow::Result<()> {
        let url = self.url(&format!("/v1/topics/{}/indexes/{}", encode_path(topic), encode_path(name)));
        let request = match declare {
            Some((path, kind)) => self.http.put(url).json(&serde_json::json!({ "path": path, "type": kind })),
            None => self.http.delete(url),
        };
        let reply: wire::IndexChanged = self.json(request)?;
        print(self.json, &reply, |reply: &wire::IndexChanged| match (&reply.cid, reply.height) {
            (Some(cid), Some(height)) => format!("{cid} height {height}\ncausal token: {}", reply.causal_token),
            _ => "unchanged: declared so already".to_string(),
        });
        Ok(())
    }

    /// Prints `topic`'s indexes: name, path, type, and whether built.
    pub(crate) fn index_list(&self, topic: &str) -> anyhow::Result<()> {
        let url = self.url(&format!("/v1/topics/{}/indexes", encode_path(topic)));
        let list: Vec<wire::IndexEntry> = self.json(self.http.get(url))?;
        print(self.json, &list, |list: &Vec<wire::IndexEntry>| {
            let lines: Vec<String> = list
                .iter()
                .map(|index| {
                    let state = match index.ready {
                        true => "built".to_string(),
                        false => format!("building: {} entries read", index.scanned),
                    };
                    let kind = serde_json::to_value(index.kind).unwrap_or_default();
                    format!("{}\t{}\t{}\t{state}", index.name, index.path, kind.as_str().unwrap_or_default())
                })
                .collect();
            if lines.is_empty() { "no index".to_string() } else { lines.join("\n") }
        });
        Ok(())
    }
}

/// Which field of a page says where the next one starts.
#[derive(Clone, Copy)]
pub(crate) enum Cursor {
    /// `next`, passed back as `after` (a query's pages).
    Next,
    /// `next_base64`, passed back as `after_base64` (a listing's pages).
    NextBase64,
}

impl Api {
    /// Prints the document `key` of `topic`: pretty JSON, or one line with --json.
    pub(crate) fn doc_get(&self, topic: &str, key: &str, causal: Option<String>) -> anyhow::Result<()> {
        let query: Vec<(&str, String)> = causal.into_iter().map(|causal| ("causal", causal)).collect();
        let doc: serde_json::Value = self.json(self.http.get(self.doc_url(topic, key)).query(&query))?;
        println!("{}", if self.json { doc.to_string() } else { serde_json::to_string_pretty(&doc)? });
        Ok(())
    }

    /// Puts (`PUT`) or patches (`PATCH`) the document `key` of `topic` with `body`.
    pub(crate) fn doc_write(
        &self,
        topic: &str,
        key: &str,
        body: Vec<u8>,
        method: reqwest::Method,
        ack: Option<String>,
        ttl: Option<String>,
    ) -> anyhow::Result<()> {
        let mut query: Vec<(&str, String)> = ack.into_iter().map(|ack| ("ack", ack)).collect();
        query.extend(ttl.map(|ttl| ("ttl", ttl)));
        let request = self
            .http
            .request(method, self.doc_url(topic, key))
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let reply: wire::DocWritten = self.json(request)?;
        print(self.json, &reply, written_line);
        Ok(())
    }

    /// Deletes the document `key` of `topic`.
    pub(crate) fn doc_delete(&self, topic: &str, key: &str, ack: Option<String>) -> anyhow::Result<()> {
        let query: Vec<(&str, String)> = ack.into_iter().map(|ack| ("ack", ack)).collect();
        let reply: wire::DocWritten = self.json(self.http.delete(self.doc_url(topic, key)).query(&query))?;
        print(self.json, &reply, written_line);
        Ok(())
    }

    /// Prints `topic`'s documents the `query` names, at most `limit`, one JSON line each,
    /// following the pages by `cursor`. Returns how many it printed, how many documents the
    /// node read for them, and the index that served the query, if one did.
    pub(crate) fn doc_pages(
        &self,
        topic: &str,
        query: &[(&str, String)],
        limit: usize,
        cursor: Cursor,
    ) -> anyhow::Result<(usize, u64, Option<String>)> {
        let url = self.url(&format!("/v1/topics/{}/docs", encode_path(topic)));
        let mut printed = 0;
        let (mut scanned, mut index) = (0, None);
        let mut after: Option<String> = None;
        while printed < limit {
            let mut page_query = query.to_vec();
            page_query.push(("limit", (limit - printed).min(1000).to_string()));
            let name = match cursor {
                Cursor::Next => "after",
                Cursor::NextBase64 => "after_base64",
            };
            page_query.extend(after.clone().map(|after| (name, after)));
            let page: wire::DocPage = self.json(self.http.get(&url).query(&page_query))?;
            for entry in &page.docs {
                let key = entry.key.clone().unwrap_or_else(|| format!("base64:{}", entry.key_base64));
                println!("{}", serde_json::json!({ "key": key, "doc": entry.doc }));
            }
            printed += page.docs.len();
            scanned += page.scanned.unwrap_or_default();
            index = index.or(page.index);
            let next = match cursor {
                Cursor::Next => page.next,
                Cursor::NextBase64 => page.next_base64,
            };
            match next {
                Some(next) if !page.docs.is_empty() => after = Some(next),
                _ => break,
            }
        }
        Ok((printed, scanned, index))
    }

    /// Prints each change of `topic`'s documents meeting `conditions` as it happens.
    pub(crate) fn doc_follow(&self, topic: &str, conditions: &[String]) -> anyhow::Result<()> {
        use std::io::BufRead as _;
        let watch = self.url(&format!("/v1/topics/{}/watch", encode_path(topic)));
        let conditions: Vec<(&str, &String)> = conditions.iter().map(|c| ("where", c)).collect();
        let response = self.send(self.http.get(watch).query(&conditions))?;
        for line in std::io::BufReader::new(response).lines() {
            let Some(data) = line?.strip_prefix("data:").map(str::to_string) else { continue };
            let change: wire::DocChange = serde_json::from_str(data.trim())?;
            let key = change.doc.clone().unwrap_or_else(|| format!("base64:{}", change.key_base64));
            println!("{}", serde_json::json!({ "key": key, "doc": change.value }));
        }
        Ok(())
    }

    /// The URL of the document `key` of `topic`.
    fn doc_url(&self, topic: &str, key: &str) -> String {
        self.url(&format!("/v1/topics/{}/docs/{}", encode_path(topic), encode_path(key)))
    }
}

/// A document write's outcome for people.
fn written_line(written: &wire::DocWritten) -> String {
    let block = match (&written.cid, written.height) {
        (Some(cid), Some(height)) => format!("{cid} height {height}"),
        _ => "unchanged".to_string(),
    };
    format!("{block} acknowledged by {}\ncausal token: {}", written.acknowledged, written.causal_token)
}
