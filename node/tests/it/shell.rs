//! `canopy shell` against a real `canopy serve`: commands piped in one a line, and typed at a
//! pseudo-terminal as a person would.

use crate::common;

use std::io::{Read as _, Write as _};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NodeProcess, WAIT_MAX, canopy, wait_until};

fn piped(node: &NodeProcess, topic: &str, script: &str) -> Output {
    let mut child = canopy()
        .args(["shell", topic, "--api", &node.api])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_piped_script_runs_every_command_and_reports_the_lines_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[], &["shop"]);
    let script = "\
# stock of the till
put greeting \"hello  world\"
get greeting
put items/apple 3
put items/pear 5
list items/
incr sales
incr sales 4
count sales
del items/pear
history items/pear
get items/pear
frobnicate
use other
heads
";
    let output = piped(&node, "shop", script);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "a failed line fails the script: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("height 1"), "{stdout}");
    assert_eq!(lines[1], "hello  world");
    assert_eq!(&lines[4..6], ["items/apple\t3", "items/pear\t5"]);
    assert_eq!(&lines[6..9], ["1", "5", "5"]);
    assert!(lines[10].ends_with("\t(deleted)") && lines[11].ends_with("\t5"), "{stdout}");
    // The failures: a key that is gone, an unknown command, and a topic not subscribed.
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 3, "{stderr}");
    assert!(errors[0].starts_with("error: line 12:") && errors[0].contains("not found"), "{stderr}");
    assert!(errors[1].starts_with("error: line 13:") && errors[1].contains("frobnicate"), "{stderr}");
    assert!(errors[2].starts_with("error: line 15:") && errors[2].contains("not subscribed"), "{stderr}");
    assert_eq!(node.get("shop", "items/pear"), None);
    assert_eq!(node.get("shop", "greeting").as_deref(), Some("hello  world"));

    // Watching for a while prints what others write meanwhile; a clean script exits 0.
    let output = std::thread::scope(|scope| {
        scope.spawn(|| {
            wait_until("the shell watches", || {
                let metrics = node.http.get(node.url("/metrics")).send().unwrap().text().unwrap();
                metrics.lines().any(|line| line.starts_with("canopy_watchers 1"))
            });
            node.put("shop", "items/plum", "9");
        });
        piped(&node, "shop", "watch 5\nget items/plum\n")
    });
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "put items/plum = 9\n9\n");
    let output = piped(&node, "shop", "watch\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("watch needs SECONDS"));
}

/// A pseudo-terminal whose output a thread keeps collecting.
struct Terminal {
    master: std::fs::File,
    seen: Arc<Mutex<String>>,
}

impl Terminal {
    fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\r").as_bytes()).unwrap();
    }

    /// Waits until the screen shows `text` after everything seen before.
    fn expect(&self, from: &mut usize, text: &str) {
        let start = Instant::now();
        loop {
            let seen = self.seen.lock().unwrap();
            if let Some(at) = seen[*from..].find(text) {
                *from += at + text.len();
                return;
            }
            assert!(start.elapsed() < WAIT_MAX, "the terminal never showed {text:?}; it shows:\n{seen}");
            drop(seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_person_types_at_a_terminal_with_line_editing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[], &["notes"]);
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = canopy()
        .args(["shell", "notes", "--api", &node.api])
        .env("HOME", dir.path())
        .env("TERM", "xterm")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let master = std::fs::File::from(pty.master);
    let seen = Arc::new(Mutex::new(String::new()));
    std::thread::spawn({
        let (mut master, seen) = (master.try_clone().unwrap(), seen.clone());
        move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = master.read(&mut buffer) {
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        }
    });
    let mut terminal = Terminal { master, seen };
    let mut at = 0;
    terminal.expect(&mut at, "type help for the commands");
    terminal.expect(&mut at, "notes> ");
    terminal.type_line("put todo buy milk");
    terminal.expect(&mut at, "height 1");
    // Line editing: Ctrl-A goes to the start of the line, and the up arrow recalls the last one.
    terminal.type_line("todo\x01get ");
    terminal.expect(&mut at, "buy milk");
    terminal.master.write_all(b"\x1b[A").unwrap();
    terminal.expect(&mut at, "get todo");
    terminal.type_line("");
    terminal.expect(&mut at, "buy milk");
    // Watching ends when Enter is pressed, and the prompt comes back.
    terminal.type_line("watch");
    terminal.expect(&mut at, "press Enter to stop");
    node.put("notes", "todo", "call home");
    terminal.expect(&mut at, "put todo = call home");
    terminal.type_line("");
    terminal.expect(&mut at, "notes> ");
    terminal.type_line("nonsense");
    terminal.expect(&mut at, "unknown command");
    terminal.type_line("exit");
    wait_until("the shell exits", || child.try_wait().unwrap().is_some());
    assert!(child.wait().unwrap().success());
    let history = std::fs::read_to_string(dir.path().join(".canopy_history")).unwrap();
    assert!(history.contains("put todo buy milk"), "the line history is kept: {history}");
}

#[test]
fn a_piped_script_writes_finds_and_deletes_documents_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[], &["reg"]);
    let script = "\
doc put api '{\"env\": \"prod\", \"port\": 80}'
doc put db '{\"env\": \"dev\", \"port\": 5432}'
doc index create by_env env
doc patch api '{\"port\": 443, \"zone\": \"b\"}'
doc get api
doc find env=prod port>=443
doc find env=dev
doc index ls
doc del db
doc ls
doc frobnicate
publish nobody listens
";
    let output = piped(&node, "reg", script);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].starts_with("error: line 11:") && stderr.contains("doc find CONDITION"), "{stderr}");
    let json_lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|line| line.starts_with("{\"doc\""))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let keys: Vec<&str> = json_lines.iter().map(|found| found["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["api", "db", "api"], "find prod, find dev, ls after the delete: {stdout}");
    assert_eq!(json_lines[0]["doc"], serde_json::json!({ "env": "prod", "port": 443, "zone": "b" }));
    assert!(stdout.contains("\"zone\": \"b\""), "get prints the document: {stdout}");
    assert!(stdout.contains("published: no other node listens"), "{stdout}");
    assert!(stdout.contains("by_env\tenv\tstring\t"), "index ls lists the declared index: {stdout}");
    assert_eq!(stdout.matches(" found, ").count(), 2, "each find says what it read: {stdout}");
}
