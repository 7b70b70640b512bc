//! `canopy table ...` and `canopy members`: the cluster's sharded tables.

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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the value of KEY in table T.
    Get {
        table: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete KEY in table T.
    Del {
        table: String,
        key: String,
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
                        if partition.held_here { "\t(held here)" } else { "" }
                    ));
                }
                lines.join("\n")
            });
        }
        TableCommand::Put { table, key, value, client } => {
            let body = if value == "-" { read_input("-")? } else { value.into_bytes() };
            let api = Api::new(&client)?.tables();
            let reply: wire::Written = api.json(api.http.put(api.topic_url(&table, "kv", Some(&key))).body(body))?;
            print(client.json, &reply, written_line);
        }
        TableCommand::Get { table, key, client } => Api::new(&client)?.tables().get(&table, &key, false)?,
        TableCommand::Del { table, key, client } => {
            let api = Api::new(&client)?.tables();
            let reply: wire::Written = api.json(api.http.delete(api.topic_url(&table, "kv", Some(&key))))?;
            print(client.json, &reply, written_line);
        }
        TableCommand::List { table, list, client } => {
            Api::new(&client)?.tables().list(&table, &list.prefix, list.after, list.limit)?
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

/// A table write for people: the block, its partition and the member that applied it.
fn written_line(written: &wire::Written) -> String {
    format!("{} height {} partition {} on {}", written.cid, written.height, written.partition, written.node)
}
