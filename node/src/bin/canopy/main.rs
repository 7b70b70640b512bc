//! `canopy`: run a node (`canopy serve`) or talk to one (`canopy put`, `get`, ...).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use canopy_node::wire;
use canopy_node::{Node, NodeConfig, Overrides};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

mod api;
mod doc;
mod shell;
mod table;

/// canopy's binaries allocate with mimalloc: the writer thread frees what callers allocated,
/// which glibc's allocator made a quarter of its time (see ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use api::{Api, commit_line, encode_path, print, read_input, say};

#[derive(Parser)]
#[command(name = "canopy", version, about = "A key-value store replicated with Merkle-CRDTs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Set KEY to VALUE in topic T (`-` reads the value from standard input).
    Put {
        topic: String,
        key: String,
        value: String,
        /// The value expires after this long (`30s`, `500ms`, `5m`, `1h`): every node then hides it.
        #[arg(long)]
        ttl: Option<String>,
        /// Copies that must hold the write before it is acknowledged (this node and peers)
        /// [default: the node's write_ack].
        #[arg(long)]
        ack: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the value of KEY in topic T.
    Get {
        topic: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add N (default 1, negative to subtract) to the counter KEY in topic T and print its value.
    Incr {
        topic: String,
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        n: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the value of the counter KEY in topic T (0 when never incremented).
    Count {
        topic: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the versions of KEY in topic T this node holds, newest first: every put and delete
    /// since the topic's last compaction, and the values still live.
    History {
        topic: String,
        key: String,
        /// Most versions to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete KEY in topic T.
    Del {
        topic: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List keys of topic T in key order.
    Ls {
        topic: String,
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Apply a JSON batch `{"ops":[{"op":"put","key":..,"value":base64},{"op":"delete","key":..}]}`
    /// from FILE (`-` for standard input) as one atomic delta.
    Batch {
        topic: String,
        file: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Subscribe topic T: replicate it with every peer that subscribes it too.
    Subscribe {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop replicating topic T; its data stays unless --purge.
    Unsubscribe {
        topic: String,
        /// Also delete the topic's data from this node.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List subscribed topics.
    Topics {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the heads of topic T.
    Heads {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Compact topic T: write a snapshot at its heads and prune the history it covers.
    Compact {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print changes of topic T as they happen.
    Watch {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish MESSAGE (`-` reads it from standard input) to the nodes listening to topic T's
    /// messages: delivered once to each listener, never stored nor replayed.
    Publish {
        topic: String,
        message: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the messages published on topic T from now on, one a line (not `subscribe`, which
    /// starts replicating a topic).
    Messages {
        topic: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the node's identity and addresses.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the author this node signs its writes as: the peer id that owns its owned topics.
    Id {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create topics and show who may write them.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Sharded tables: one keyspace spread over partition topics held by the cluster's members
    /// (nodes started with --tables); any member serves any key.
    #[command(subcommand)]
    Table(table::TableCommand),
    /// Documents: JSON objects under keys of a topic, whose top-level fields merge on their own
    /// across nodes.
    #[command(subcommand)]
    Doc(doc::DocCommand),
    /// List the cluster's live members (nodes started with --tables).
    Members {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Work on the member the client talks to.
    #[command(subcommand)]
    Member(table::MemberCommand),
    /// Manage API tokens in a tokens file (what `canopy serve --tokens FILE` reads).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Work on topic T interactively (line editing, history), or run commands piped in, one per
    /// line; `help` lists the commands.
    Shell {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token: its secret is printed once, and only its hash goes into FILE (created
    /// readable by its owner alone). A running node takes it on SIGHUP.
    Create {
        /// The tokens file.
        #[arg(long)]
        file: PathBuf,
        /// A name for the token (who holds it).
        #[arg(long)]
        name: String,
        /// What it may do: read, write (and read) or admin (everything).
        #[arg(long)]
        role: String,
        /// Limit it to topics and tables whose names start with this (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create (subscribe) topic NAME. An owned topic is named `<this node's id>/NAME` and only
    /// this node writes it; a topic with a writer list is named `<this node's id>/writers/NAME`
    /// and this node grants and revokes its writers. Others subscribe to the full name.
    Create {
        name: String,
        /// Who may write: `open` (anyone), `owned` (only this node), `writers` (this node and
        /// the writers it grants) or `keyed` (anyone, each only the keys naming it).
        #[arg(long, default_value = "open")]
        mode: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show topic T's mode, owner and writers.
    Info {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Let WRITER (a peer id, as `canopy id` prints it) write topic T; only T's owner may.
    Grant {
        topic: String,
        writer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take WRITER off topic T's writer list: its writes made after it learns of this are refused.
    Revoke {
        topic: String,
        writer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Which keys a listing shows.
#[derive(Args)]
struct ListArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Start after this key.
    #[arg(long)]
    after: Option<String>,
    /// Most keys to list; all when not given.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Args)]
struct ClientArgs {
    /// URL of the node's HTTP API.
    #[arg(long = "api", env = "CANOPY_URL", default_value = "http://127.0.0.1:7700")]
    url: String,
    /// Print JSON instead of human output.
    #[arg(long)]
    json: bool,
    /// The API token, for a node started with --tokens (sent as `Authorization: Bearer`).
    #[arg(long, env = "CANOPY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A certificate authority (PEM) to trust for an https:// API, beside none other.
    #[arg(long, env = "CANOPY_CACERT")]
    cacert: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with any of the settings below.
    #[arg(long, env = "CANOPY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Overrides,
}

impl ServeArgs {
    /// The file's settings (or the defaults), with the flags and environment variables over them.
    fn config(self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        self.settings.apply(&mut config);
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        command => client(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("canopy: {}", canopy_node::error_text(error.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs redirected to a file or a journal stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .init();
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = canopy_node::http::bind(config.api)
            .await
            .with_context(|| format!("cannot bind the HTTP API to {}", config.api))?;
        let api = listener.local_addr()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(canopy_node::tls::server_config(cert, key).await?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        if tls.is_none() && config.tokens.is_some() && !api.ip().is_loopback() {
            tracing::warn!(%api, "API tokens cross the network in clear: give --tls-cert and --tls-key");
        }
        let tables = config.tables.then(|| {
            let url = config.advertise_api.clone().unwrap_or_else(|| format!("{scheme}://{api}"));
            (url, std::time::Duration::from_secs(config.member_ttl_s))
        });
        let node = Node::start(config).await?;
        if let Some((url, member_ttl)) = tables {
            node.join_tables(&url, member_ttl).await?;
        }
        let status = node.status();
        say(format_args!("canopy {} peer_id={} api={scheme}://{api}", status.version, status.peer_id));
        for address in &status.listen {
            say(format_args!("listen {address}"));
        }
        tracing::info!(peer_id = %status.peer_id, %api, "node started");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stop_rx.await;
        };
        let server = match tls {
            Some(tls) => tokio::spawn(canopy_node::http::serve_tls(node.clone(), listener, tls, stopped)),
            None => tokio::spawn(canopy_node::http::serve(node.clone(), listener, stopped)),
        };
        let hangups = tokio::spawn(reload_on_hangup(node.clone()));
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(());
        let _ = server.await;
        tracing::debug!("shutdown: HTTP API stopped");
        // Its handle on the node would keep the store open through the shutdown's wait.
        hangups.abort();
        let _ = hangups.await;
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the API tokens file again on each SIGHUP, so tokens are added and revoked without a
/// restart.
async fn reload_on_hangup(node: Node) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return tracing::warn!("cannot catch SIGHUP: the tokens file is read at start only");
        };
        while hangup.recv().await.is_some() {
            match node.reload_tokens() {
                Ok(count) => tracing::info!(count, "API tokens read again"),
                Err(error) => tracing::error!(%error, "the tokens file is unusable; the tokens in force stay"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = node;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn client(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(_) => unreachable!("handled by serve"),
        Command::Shell { topic, client } => return shell::run(&Api::new(&client)?, topic),
        Command::Table(command) => table::run(command)?,
        Command::Doc(command) => doc::run(command)?,
        Command::Members { client } => table::members(&client)?,
        Command::Member(command) => table::member(command)?,
        Command::Token(TokenCommand::Create { file, name, role, prefixes }) => {
            let role: canopy_node::auth::Role = role.parse().map_err(anyhow::Error::msg)?;
            let (secret, entry) = canopy_node::auth::new_token(&name, role, prefixes);
            canopy_node::auth::append_token(&file, entry)?;
            say(format_args!("{secret}"));
        }
        Command::Put { topic, key, value, ttl, ack, client } => {
            let body = if value == "-" { read_input("-")? } else { value.into_bytes() };
            Api::new(&client)?.put(&topic, &key, body, ttl.as_deref(), ack)?;
        }
        Command::Get { topic, key, client } => Api::new(&client)?.get(&topic, &key, false)?,
        Command::Incr { topic, key, n, client } => Api::new(&client)?.increment(&topic, &key, n)?,
        Command::Count { topic, key, client } => Api::new(&client)?.count(&topic, &key)?,
        Command::History { topic, key, limit, client } => Api::new(&client)?.history(&topic, &key, limit)?,
        Command::Del { topic, key, client } => Api::new(&client)?.delete(&topic, &key)?,
        Command::Ls { topic, list, client } => Api::new(&client)?.list(&topic, &list.prefix, list.after, list.limit)?,
        Command::Subscribe { topic, client } => {
            let api = Api::new(&client)?;
            let reply: wire::Subscription =
                api.json(api.http.put(api.url(&format!("/v1/topics/{}", encode_path(&topic)))))?;
            print(client.json, &reply, |_| format!("subscribed {topic}"));
        }
        Command::Unsubscribe { topic, purge, client } => {
            let api = Api::new(&client)?;
            let url = api.url(&format!("/v1/topics/{}", encode_path(&topic)));
            let reply: wire::Subscription = api.json(api.http.delete(url).query(&[("purge", purge.to_string())]))?;
            print(client.json, &reply, |_| {
                format!("unsubscribed {topic}{}", if purge { " and purged it" } else { "" })
            });
        }
        Command::Batch { topic, file, client } => {
            let api = Api::new(&client)?;
            let body = read_input(&file)?;
            let url = api.url(&format!("/v1/topics/{}/batch", encode_path(&topic)));
            let reply: wire::Batched =
                api.json(api.http.post(url).header("content-type", "application/json").body(body))?;
            print(client.json, &reply, |reply| commit_line(reply.commit().as_ref()));
        }
        Command::Topics { client } => {
            let api = Api::new(&client)?;
            let reply: Vec<wire::TopicSummary> = api.json(api.http.get(api.url("/v1/topics")))?;
            print(client.json, &reply, |topics| {
                topics
                    .iter()
                    .map(|t| {
                        format!(
                            "{}\t{}\tkeys={}\theads={}\tmax_height={}",
                            t.topic,
                            t.mode,
                            t.keys,
                            t.heads.len(),
                            t.max_height
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Heads { topic, client } => Api::new(&client)?.heads(&topic)?,
        Command::Compact { topic, client } => {
            let api = Api::new(&client)?;
            let url = api.url(&format!("/v1/topics/{}/compact", encode_path(&topic)));
            let reply: wire::Compaction = api.json(api.http.post(url))?;
            // An empty body compacts the DAG too, so its figures are there.
            let figure = |figure: Option<u64>| figure.map_or("null".to_string(), |n| n.to_string());
            print(client.json, &reply, |reply| {
                format!(
                    "snapshot {}\nkeys {}\nblocks {} ({} pruned now)\nbytes {} -> {}",
                    reply.snapshot.as_deref().unwrap_or("none: the topic has no history"),
                    figure(reply.keys),
                    figure(reply.blocks),
                    reply.pruned_blocks,
                    reply.bytes_before,
                    reply.bytes_after
                )
            });
        }
        Command::Watch { topic, client } => Api::new(&client)?.watch(&topic, &crossbeam_channel::never::<()>())?,
        Command::Publish { topic, message, client } => {
            let body = if message == "-" { read_input("-")? } else { message.into_bytes() };
            let api = Api::new(&client)?;
            let reply: wire::Published = api.json(api.http.post(api.topic_url(&topic, "messages", None)).body(body))?;
            print(client.json, &reply, |reply| {
                let peers = if reply.sent { "sent to the listening nodes" } else { "no other node listens" };
                format!("published: {peers}; {} listener(s) here", reply.local_listeners)
            });
        }
        Command::Messages { topic, count, client } => {
            use std::io::BufRead as _;
            let api = Api::new(&client)?;
            let response = api.send(api.http.get(api.topic_url(&topic, "messages", None)))?;
            let mut printed = 0;
            for line in std::io::BufReader::new(response).lines() {
                let Some(data) = line?.strip_prefix("data:").map(|data| data.trim().to_string()) else { continue };
                let event: wire::MessageEvent = serde_json::from_str(&data)?;
                if client.json {
                    println!("{data}");
                } else {
                    if let Some(missed) = event.missed {
                        eprintln!("({missed} messages missed: this listener fell behind)");
                    }
                    let text = event.data.unwrap_or_else(|| format!("base64:{}", event.data_base64));
                    println!("{}: {text}", event.from);
                }
                printed += 1;
                if count.is_some_and(|count| printed >= count) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            anyhow::bail!("the node closed the messages stream");
        }
        Command::Id { client } => {
            let api = Api::new(&client)?;
            let reply: wire::Status = api.json(api.http.get(api.url("/v1/status")))?;
            print(client.json, &json!({ "author": reply.author, "peer_id": reply.peer_id }), |_| {
                reply.author.to_string()
            });
        }
        Command::Topic(TopicCommand::Create { name, mode, client }) => {
            let api = Api::new(&client)?;
            let body = wire::CreateTopic { mode, name };
            let reply: wire::TopicAccess = api.json(api.http.post(api.url("/v1/topics")).json(&body))?;
            print(client.json, &reply, |reply| format!("created {} topic {}", reply.mode, reply.topic));
        }
        Command::Topic(TopicCommand::Info { topic, client }) => {
            let api = Api::new(&client)?;
            let url = api.url(&format!("/v1/topics/{}/access", encode_path(&topic)));
            let reply: wire::TopicAccess = api.json(api.http.get(url))?;
            print(client.json, &reply, |reply| {
                let writers = match &reply.writers {
                    None => "anyone".to_string(),
                    Some(writers) => writers.join(", "),
                };
                format!(
                    "topic {}\nmode {}\nowner {}\nwriters {}",
                    reply.topic,
                    reply.mode,
                    reply.owner.as_deref().unwrap_or("none"),
                    writers
                )
            });
        }
        Command::Topic(TopicCommand::Grant { topic, writer, client }) => {
            let api = Api::new(&client)?;
            let url = api.url(&format!("/v1/topics/{}/writers", encode_path(&topic)));
            let reply: wire::WritersChange = api.json(api.http.post(url).json(&wire::Grant { writer }))?;
            print(client.json, &reply, |value| writers_change_text("granted", "already a writer", value));
        }
        Command::Topic(TopicCommand::Revoke { topic, writer, client }) => {
            let api = Api::new(&client)?;
            let url = api.url(&format!("/v1/topics/{}/writers/{}", encode_path(&topic), encode_path(&writer)));
            let reply: wire::WritersChange = api.json(api.http.delete(url))?;
            print(client.json, &reply, |value| writers_change_text("revoked", "not a writer", value));
        }
        Command::Status { client } => {
            let api = Api::new(&client)?;
            let reply: wire::Status = api.json(api.http.get(api.url("/v1/status")))?;
            print(client.json, &reply, |s| {
                format!(
                    "peer_id {}\nauthor {}\nversion {}\npeers {}\ntopics {}\nlisten {}",
                    s.peer_id,
                    s.author,
                    s.version,
                    s.peers,
                    s.topics,
                    s.listen.join(" ")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How a grant or revocation reads: what it did to whom in which topic, and its block.
fn writers_change_text(done: &str, unchanged: &str, change: &wire::WritersChange) -> String {
    let (writer, topic) = (&change.writer, &change.topic);
    match &change.commit {
        Some(commit) => format!("{done} {writer} in {topic} (block {})", commit.cid),
        None => format!("{writer} is {unchanged} in {topic}: nothing written"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
