//! `canopy table ...` and `canopy members`: the cluster's sharded tables.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_node::wire;
use clap::Subcommand;

use super::api::{Api, encode_path, print, read_input};
use super::{ClientArgs, ListArgs};

#[derive(Subcommand)]
pub(crate) enum TableCommand {
    /// Create table NAME, split into PARTITIONS partitions each held by REPLICAS members.
    Create {
        name: String,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the cluster's tables.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show table NAME: its shape and which members hold each partition.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set KEY to VALUE in table T (`-` reads the value from standard input), on whichever
    /// members hold the key's partition.
    Put {
        table: String,
        key: String,
        value: String,
        /// Owners that must hold the write before it is acknowledged: a number or `all`
        /// [default: the node's write_ack].
        #[arg(long)]
        ack: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the value of KEY in table T.
    Get {
        table: String,
        key: String,
        /// Read only from a copy holding this causal token (a write's or an earlier read's).
        #[arg(long)]
        causal: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete KEY in table T.
    Del {
        table: String,
        key: String,
        /// Owners that must hold the delete before it is acknowledged: a number or `all`.
        #[arg(long)]
        ack: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Apply a JSON batch `{"ops":[{"op":"put","key":..,"value":base64},...]}` from FILE (`-`
    /// for standard input) to table T: split by partition, each partition's part applied on its
    /// owners as one delta. Exits non-zero when any partition failed, naming it.
    Batch {
        table: String,
        file: String,
        /// Owners that must hold each partition's part before it is acknowledged.
        #[arg(long)]
        ack: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the keys of table T in key order, across its partitions.
    List {
        table: String,
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn run(command: TableCommand) -> anyhow::Result<()> {
    match command {
        TableCommand::Create { name, partitions, replicas, client } => {
            let api = Api::new(&client)?;
            let body = wire::CreateTable { name, partitions, replicas };
            let reply: wire::TableDef = api.json(api.http.post(api.url("/v1/tables")).json(&body))?;
            print(client.json, &reply, table_line);
        }
        TableCommand::Ls { client } => {
            let api = Api::new(&client)?;
            let reply: wire::Tables = api.json(api.http.get(api.url("/v1/tables")))?;
            print(client.json, &reply, |reply| reply.tables.iter().map(table_line).collect::<Vec<_>>().join("\n"));
        }
        TableCommand::Show { name, client } => {
            let api = Api::new(&client)?;
            let url = api.url(&format!("/v1/tables/{}", encode_path(&name)));
            let reply: wire::TableShown = api.json(api.http.get(url))?;
            print(client.json, &reply, |shown| {
                let mut lines = vec![shape_line(&shown.name, shown.partitions, shown.replicas)];
                for partition in &shown.placement {
                    lines.push(format!(
                        "{}\t{}\t{}{}",
                        partition.partition,
                        partition.topic,
                        partition.owners.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                        match (partition.held_here, partition.caught_up_here) {
                            (true, true) => "\t(held here)",
                            (true, false) => "\t(held here, catching up)",
                            (false, _) => "",
                        }
                    ));
                }
                lines.join("\n")
            });
        }
        TableCommand::Put { table, key, value, ack, client } => {
            let body = if value == "-" { read_input("-")? } else { value.into_bytes() };
            let api = Api::new(&client)?.tables();
            let url = api.topic_url(&table, "kv", Some(&key));
            let reply: wire::Written = api.json(api.http.put(url).query(&ack_query(ack)).body(body))?;
            print(client.json, &reply, written_line);
        }
        TableCommand::Get { table, key, causal: None, client } => {
            Api::new(&client)?.tables().get(&table, &key, false)?
        }
        TableCommand::Get { table, key, causal: Some(causal), client } => {
            let api = Api::new(&client)?.tables();
            let url = api.topic_url(&table, "kv", Some(&key));
            let response = api.send(api.http.get(url).query(&[("causal", causal)]))?;
            let token = response
                .headers()
                .get(canopy_node::causal::CAUSAL_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let value = response.bytes()?;
            if client.json {
                let reply = serde_json::json!({ "causal_token": token, "key": key, "value": BASE64.encode(&value) });
                println!("{reply}");
            } else {
                println!("{}", String::from_utf8_lossy(&value));
                eprintln!("causal token: {token}");
            }
        }
        TableCommand::Del { table, key, ack, client } => {
            let api = Api::new(&client)?.tables();
            let url = api.topic_url(&table, "kv", Some(&key));
            let reply: wire::Written = api.json(api.http.delete(url).query(&ack_query(ack)))?;
            print(client.json, &reply, written_line);
        }
        TableCommand::Batch { table, file, ack, client } => {
            let api = Api::new(&client)?.tables();
            let body = read_input(&file)?;
            let url = api.topic_url(&table, "batch", None);
            let request = api.http.post(url).query(&ack_query(ack)).header("content-type", "application/json");
            let response =
                request.body(body).send().with_context(|| format!("cannot reach the node at {}", api.base))?;
            if response.status() != reqwest::StatusCode::MULTI_STATUS {
                let reply: wire::TableBatched = Api::check(response)?.json()?;
                print(client.json, &reply, batched_text);
                return Ok(());
            }
            let reply: wire::TableBatched = response.json()?;
            print(client.json, &reply, batched_text);
            let failed: Vec<String> = reply
                .partitions
                .iter()
                .filter(|outcome| outcome.status != 200)
                .map(|outcome| outcome.partition.to_string())
                .collect();
            anyhow::bail!("partitions {} of table {table} failed; the others applied their part", failed.join(", "));
        }
        TableCommand::List { table, list, client } => {
            Api::new(&client)?.tables().list(&table, &list.prefix, list.after, list.limit)?
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum MemberCommand {
    /// Drain the member: every partition it holds is placed elsewhere and handed off once the
    /// new owners hold all it holds. Waits until it holds none; then stopping it loses nothing.
    Drain {
        /// Longest to wait, in seconds; the drain goes on after.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How often `canopy member drain` asks how far the drain has come.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(500);

pub(crate) fn member(command: MemberCommand) -> anyhow::Result<()> {
    match command {
        MemberCommand::Drain { timeout_s, client } => {
            let api = Api::new(&client)?;
            let url = api.url("/v1/admin/drain");
            let mut status: wire::Drain = api.json(api.http.post(&url))?;
            let started = std::time::Instant::now();
            let mut last_said = None;
            while !status.done {
                if started.elapsed().as_secs() >= timeout_s {
                    anyhow::bail!(
                        "the member still holds {} partitions after {timeout_s} s; it keeps draining (check again with canopy member drain)",
                        status.partitions_held
                    );
                }
                if !client.json && last_said != Some(status.partitions_held) {
                    eprintln!("draining: {} partitions held", status.partitions_held);
                    last_said = Some(status.partitions_held);
                }
                std::thread::sleep(DRAIN_POLL);
                status = api.json(api.http.get(&url))?;
            }
            print(client.json, &status, |status| {
                format!(
                    "drained: the member holds no partition ({} copies handed off await deletion); stopping it loses nothing",
                    status.awaiting_deletion
                )
            });
        }
    }
    Ok(())
}

/// Prints the cluster's live members.
pub(crate) fn members(client: &ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(client)?;
    let reply: wire::Members = api.json(api.http.get(api.url("/v1/members")))?;
    print(client.json, &reply, |reply| {
        reply.members.iter().map(|m| format!("{}\t{}", m.peer_id, m.api)).collect::<Vec<_>>().join("\n")
    });
    Ok(())
}

fn shape_line(name: &str, partitions: u32, replicas: u32) -> String {
    format!("{name}\tpartitions={partitions}\treplicas={replicas}")
}

fn table_line(table: &wire::TableDef) -> String {
    shape_line(&table.name, table.partitions, table.replicas)
}

/// A table write for people: the block, its partition, the member that applied it, the owners
/// holding it and its causal token.
fn written_line(written: &wire::Written) -> String {
    format!(
        "{} height {} partition {} on {} acknowledged by {}\ncausal token: {}",
        written.cid, written.height, written.partition, written.node, written.acknowledged, written.causal_token
    )
}

/// The query naming a write's ack level, when given.
fn ack_query(ack: Option<String>) -> Vec<(&'static str, String)> {
    ack.into_iter().map(|ack| ("ack", ack)).collect()
}

/// A table batch's outcome for people: one line per partition.
fn batched_text(batched: &wire::TableBatched) -> String {
    let lines: Vec<String> = batched
        .partitions
        .iter()
        .map(|outcome| match &outcome.error {
            None => format!(
                "partition {}\t{} ops\tacknowledged by {}",
                outcome.partition,
                outcome.ops,
                outcome.acknowledged.unwrap_or_default()
            ),
            Some(error) => {
                format!("partition {}\t{} ops\tFAILED ({}): {error}", outcome.partition, outcome.ops, outcome.status)
            }
        })
        .collect();
    lines.join("\n")
}
