//! CPU time this process's threads spend, by what they do, from Linux's `/proc`: where a
//! workload's time goes between canopy's writer threads, its index journal thread, RocksDB's
//! background threads and the rest (the benchmark's own threads, which submit the work).

use serde::Serialize;

/// Kernel clock ticks a second in `/proc/self/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// Seconds of CPU used, by group of threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ThreadCpu {
    /// canopy's writer threads (`canopy-writer-N`).
    pub writer_s: f64,
    /// The documents' index journal thread (`canopy-indexes`).
    pub journal_s: f64,
    /// RocksDB's flush and compaction threads (`rocksdb:...`).
    pub rocksdb_s: f64,
    /// Every other thread, those gone included.
    pub other_s: f64,
}

impl ThreadCpu {
    /// What the process's threads have used so far; `None` where `/proc` does not say.
    pub fn now() -> Option<ThreadCpu> {
        let mut cpu = ThreadCpu::default();
        let mut named = 0.0;
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let path = task.ok()?.path();
            // A thread may end between the listing and these reads: it then counts as other.
            let (Ok(comm), Ok(schedstat)) =
                (std::fs::read_to_string(path.join("comm")), std::fs::read_to_string(path.join("schedstat")))
            else {
                continue;
            };
            let Some(ns) = schedstat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()) else { continue };
            let seconds = ns as f64 / 1e9;
            let group = match comm.trim() {
                name if name.starts_with("canopy-writer") => &mut cpu.writer_s,
                "canopy-indexes" => &mut cpu.journal_s,
                name if name.starts_with("rocksdb:") => &mut cpu.rocksdb_s,
                _ => continue,
            };
            *group += seconds;
            named += seconds;
        }
        cpu.other_s = (process_s()? - named).max(0.0);
        Some(cpu)
    }

    /// What was used from `earlier` to `self`.
    pub fn since(self, earlier: ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            writer_s: self.writer_s - earlier.writer_s,
            journal_s: self.journal_s - earlier.journal_s,
            rocksdb_s: self.rocksdb_s - earlier.rocksdb_s,
            other_s: self.other_s - earlier.other_s,
        }
    }

    /// Each group's microseconds per one of `items`.
    pub fn per_item_us(self, items: usize) -> [f64; 4] {
        let per = |seconds: f64| seconds * 1e6 / items.max(1) as f64;
        [per(self.writer_s), per(self.journal_s), per(self.rocksdb_s), per(self.other_s)]
    }
}

/// The process's CPU seconds, its ended threads' included (user and system time of
/// `/proc/self/stat`, fields 14 and 15).
fn process_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: the fields counted follow it.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |at: usize| fields.get(at - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_thread_that_works_is_counted_in_its_group() {
        let Some(before) = ThreadCpu::now() else { return };
        let worker = std::thread::Builder::new()
            .name("canopy-writer-9".into())
            .spawn(move || {
                // Works until the writers' group shows 50 ms more (or half a minute passes).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                let mut spun = 0u64;
                loop {
                    for _ in 0..100_000 {
                        spun = std::hint::black_box(spun.wrapping_add(1));
                    }
                    let during = ThreadCpu::now().unwrap().since(before);
                    if during.writer_s >= 0.05 || std::time::Instant::now() > deadline {
                        return during;
                    }
                }
            })
            .unwrap();
        let during = worker.join().unwrap();
        assert!(during.writer_s >= 0.05, "{during:?}");
        assert_eq!(during.journal_s, 0.0);
    }
}
