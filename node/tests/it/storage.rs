//! A node whose disk fills up: a real `canopy serve` on a small tmpfs (mounting one needs root;
//! without it the test says so and does nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;

use crate::common::NodeProcess;

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, megabytes: u32) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}M"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    fn grow(&self, megabytes: u32) {
        let status =
            Command::new("mount").args(["-o", &format!("remount,size={megabytes}M")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), 24) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (data_dir, log) = (dir.path().join("node"), dir.path().join("node.log"));
    let value = "v".repeat(30_000);
    let mut acknowledged = Vec::new();
    let refusal = {
        let node = NodeProcess::start_logged(&data_dir, &["t"], &[], &log);
        let refusal = (0..10_000)
            .find_map(|i| {
                let key = format!("k{i}");
                let response =
                    node.http.put(node.url(&format!("/v1/topics/t/kv/{key}"))).body(value.clone()).send().unwrap();
                match response.status() {
                    StatusCode::OK => {
                        acknowledged.push(key);
                        None
                    }
                    status => Some((status, response.text().unwrap())),
                }
            })
            .expect("a 24 MiB disk fills up");
        // The write that failed says why, and so does every write after it, which the store
        // refuses until the node restarts; reads go on.
        let (status, body) = &refusal;
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("No space left on device") && !body.contains("corrupt"), "{body}");
        let after = node.http.put(node.url("/v1/topics/t/kv/after")).body("x").send().unwrap();
        assert_eq!(after.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(after.text().unwrap().contains("restart the node"));
        assert_eq!(node.get("t", &acknowledged[0]).as_deref(), Some(value.as_str()));
        let mut node = node;
        assert!(node.terminate().success());
        refusal
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("ERROR") && log.contains("a write to the store failed"), "{log}");
    assert!(acknowledged.len() > 10, "{} writes before {refusal:?}", acknowledged.len());

    // With room again, the restarted node holds every acknowledged write and takes new ones.
    disk.grow(200);
    let node = NodeProcess::start(&data_dir, &[], &["t"]);
    assert_eq!(node.key_count("t"), acknowledged.len() as u64);
    for key in &acknowledged {
        assert_eq!(node.get("t", key).as_deref(), Some(value.as_str()), "{key}");
    }
    node.put("t", "after", "x");
}
