//! `canopy shell`: the commands of one topic, typed with line editing and history on a terminal,
//! or piped in one per line so they script.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use super::api::{Api, say};

/// Every command with its arguments, one a line; `usage` finds a command's line here.
const HELP: &str = "\
list [PREFIX]             keys and values in key order (also: ls)
get KEY                   the value of KEY
put KEY VALUE...          set KEY to VALUE (the rest of the line; quote to keep spaces)
put --ttl D KEY VALUE...  the same, the value expiring after D (30s, 5m, 1h)
del KEY                   delete KEY
incr KEY [N]              add N (default 1, negative to subtract) to the counter KEY
count KEY                 the value of the counter KEY
history KEY [N]           the last N (default 100) versions of KEY, newest first
watch [SECONDS]           print changes for SECONDS, or until Enter is pressed
heads                     the topic's heads
doc get KEY               the document KEY as JSON
doc put KEY JSON          make JSON (an object; quote it: '{\"a\":1}') the document KEY
doc patch KEY JSON        apply a merge patch to the document KEY (null removes a field)
doc del KEY               delete the document KEY
doc find CONDITION...     documents meeting every condition (env=prod, port>=80, name^=api)
doc ls                    every document, in key order
doc index create NAME PATH [string|number|bool]  declare an index on a field, on every node
doc index drop NAME       drop an index on every node
doc index ls              the topic's indexes, and whether each is built
publish MESSAGE...        publish a message to those listening to the topic's messages
use TOPIC                 work on TOPIC from now on
help                      this list
exit                      leave (also: quit, Ctrl-D)";

/// Versions `history` lists when not told how many.
const HISTORY_DEFAULT: usize = 100;

/// What the loop does after a command.
enum Flow {
    Continue,
    Exit,
}

struct Shell<'a> {
    api: &'a Api,
    topic: String,
    interactive: bool,
}

/// Runs the shell on `topic`: interactive when standard input is a terminal, otherwise one
/// command a line from it, with exit status 1 when any failed.
pub(super) fn run(api: &Api, topic: String) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    let mut shell = Shell { api, topic, interactive };
    if interactive { shell.interactive() } else { shell.piped() }
}

fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".canopy_history"))
}

fn usage(command: &str) -> &'static str {
    HELP.lines().find(|line| line.split_whitespace().next() == Some(command)).unwrap_or(HELP)
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> anyhow::Result<T> {
    text.parse().map_err(|_| anyhow!("{what} must be a number, not {text:?}"))
}

impl Shell<'_> {
    fn interactive(&mut self) -> anyhow::Result<ExitCode> {
        let mut editor = DefaultEditor::new()?;
        let history = history_file();
        if let Some(path) = &history {
            // A missing or unreadable history file only means starting without one.
            let _ = editor.load_history(path);
        }
        say(format_args!("canopy shell on {} at {}: type help for the commands", self.topic, self.api.base));
        loop {
            match editor.readline(&format!("{}> ", self.topic)) {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    match self.execute(&line) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Exit) => break,
                        Err(error) => eprintln!("error: {}", canopy_node::error_text(error.as_ref())),
                    }
                }
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn piped(&mut self) -> anyhow::Result<ExitCode> {
        let mut failed = false;
        let mut line = String::new();
        for number in 1.. {
            line.clear();
            if std::io::stdin().read_line(&mut line)? == 0 {
                break;
            }
            match self.execute(&line) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Exit) => break,
                Err(error) => {
                    eprintln!("error: line {number}: {}", canopy_node::error_text(error.as_ref()));
                    failed = true;
                }
            }
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    }

    fn execute(&mut self, line: &str) -> anyhow::Result<Flow> {
        let line = line.trim();
        if line.starts_with('#') {
            return Ok(Flow::Continue);
        }
        let words = shell_words::split(line).map_err(|e| anyhow!("cannot split the line into words: {e}"))?;
        let Some((command, args)) = words.split_first() else { return Ok(Flow::Continue) };
        let (api, topic) = (self.api, self.topic.as_str());
        match (command.as_str(), args) {
            ("help", _) => say(format_args!("{HELP}")),
            ("exit" | "quit", []) => return Ok(Flow::Exit),
            ("list" | "ls", []) => api.list(topic, "", None, None)?,
            ("list" | "ls", [prefix]) => api.list(topic, prefix, None, None)?,
            ("get", [key]) => api.get(topic, key, true)?,
            ("put", [flag, ttl, key, value @ ..]) if flag == "--ttl" && !value.is_empty() => {
                api.put(topic, key, value.join(" ").into_bytes(), Some(ttl.as_str()), None)?
            }
            ("put", [key, value @ ..]) if !value.is_empty() && key != "--ttl" => {
                api.put(topic, key, value.join(" ").into_bytes(), None, None)?
            }
            ("del", [key]) => api.delete(topic, key)?,
            ("incr", [key]) => api.increment(topic, key, 1)?,
            ("incr", [key, n]) => api.increment(topic, key, number(n, "N")?)?,
            ("count", [key]) => api.count(topic, key)?,
            ("history", [key]) => api.history(topic, key, HISTORY_DEFAULT)?,
            ("history", [key, n]) => api.history(topic, key, number(n, "N")?)?,
            ("heads", []) => api.heads(topic)?,
            ("doc", [sub, rest @ ..]) => self.doc(sub, rest)?,
            ("publish", message) if !message.is_empty() => {
                let url = api.topic_url(topic, "messages", None);
                let reply: canopy_node::wire::Published = api.json(api.http.post(url).body(message.join(" ")))?;
                let peers = if reply.sent { "sent to the listening nodes" } else { "no other node listens" };
                say(format_args!("published: {peers}"));
            }
            ("watch", []) => self.watch_until_enter()?,
            ("watch", [seconds]) => {
                let seconds: f64 = number(seconds, "SECONDS")?;
                let duration = Duration::try_from_secs_f64(seconds)
                    .map_err(|_| anyhow!("SECONDS must be a positive number, not {seconds}"))?;
                api.watch(topic, &crossbeam_channel::after(duration))?;
            }
            ("use", [name]) => {
                self.topic = name.clone();
                if !self.interactive {
                    return Ok(Flow::Continue);
                }
                say(format_args!("now on {name}"));
            }
            (
                "exit" | "quit" | "list" | "ls" | "get" | "put" | "del" | "incr" | "count" | "history" | "heads"
                | "watch" | "use" | "doc" | "publish",
                _,
            ) => bail!("usage: {}", usage(command)),
            (other, _) => bail!("unknown command {other:?}: type help for the commands"),
        }
        Ok(Flow::Continue)
    }

    /// `doc SUB ARGS...`: the documents' commands.
    fn doc(&self, sub: &str, args: &[String]) -> anyhow::Result<()> {
        let (api, topic) = (self.api, self.topic.as_str());
        match (sub, args) {
            ("get", [key]) => api.doc_get(topic, key, None),
            ("put" | "patch", [key, json @ ..]) if !json.is_empty() => {
                let method = if sub == "put" { reqwest::Method::PUT } else { reqwest::Method::PATCH };
                api.doc_write(topic, key, json.join(" ").into_bytes(), method, None, None)
            }
            ("del", [key]) => api.doc_delete(topic, key, None),
            ("find", conditions) if !conditions.is_empty() => {
                let query: Vec<(&str, String)> = conditions.iter().map(|c| ("where", c.clone())).collect();
                let (found, scanned, index) = api.doc_pages(topic, &query, usize::MAX, super::doc::Cursor::Next)?;
                let how = index.map_or_else(|| "scanning".to_string(), |index| format!("through index {index}"));
                say(format_args!("{found} found, {scanned} documents read {how}"));
                Ok(())
            }
            ("ls", []) => api.doc_pages(topic, &[], usize::MAX, super::doc::Cursor::NextBase64).map(|_| ()),
            ("index", [verb, rest @ ..]) => match (verb.as_str(), rest) {
                ("create", [name, path]) => api.index_change(topic, name, Some((path, "string"))),
                ("create", [name, path, kind]) if ["string", "number", "bool"].contains(&kind.as_str()) => {
                    api.index_change(topic, name, Some((path, kind)))
                }
                ("drop", [name]) => api.index_change(topic, name, None),
                ("ls", []) => api.index_list(topic),
                _ => {
                    let lines: Vec<&str> = HELP.lines().filter(|line| line.starts_with("doc index")).collect();
                    bail!("usage:\n{}", lines.join("\n"))
                }
            },
            _ => {
                let lines: Vec<&str> = HELP.lines().filter(|line| line.starts_with("doc ")).collect();
                bail!("usage:\n{}", lines.join("\n"))
            }
        }
    }

    /// Prints changes until Enter is pressed; from a pipe there is no one to press it.
    fn watch_until_enter(&self) -> anyhow::Result<()> {
        if !self.interactive {
            bail!("watch needs SECONDS when commands come from a pipe");
        }
        say(format_args!("watching {}: press Enter to stop", self.topic));
        let (pressed, stop) = crossbeam_channel::bounded(1);
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = pressed.send(());
        });
        let watched = self.api.watch(&self.topic, &stop);
        if watched.is_err() {
            say(format_args!("the watch ended: press Enter"));
        }
        // The reader must have taken its line before the prompt reads the next one.
        let _ = reader.join();
        watched
    }
}
